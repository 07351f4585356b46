"""Session records: what StartSession created and what DescribeSessions reports.

A session outlives its websocket: when the client's connection drops, the session is
``Disconnected`` and ResumeSession hands out a new token for the same session id, whose agent
side (sequence numbers, streams, TCP connections) is still there. It ends for good when the
client or the API terminates it, after the idle timeout, or when its agent goes away; a session
that has ended cannot be resumed (``ResumeSession`` docs in service-2.json, and the
"End a session" page of the Session Manager user guide).

Session ids have the form ``<caller>-<17 hex digits>`` (AWS examples:
``Mary-Major-07a16060613c408b5``); the token is opaque to the client.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """``SessionStatus`` in service-2.json. The stand-in uses ``Failed`` for a session its
    agent could not run (handshake or port failure) and never ``Terminating``."""

    CONNECTING = "Connecting"
    CONNECTED = "Connected"
    DISCONNECTED = "Disconnected"
    TERMINATING = "Terminating"
    TERMINATED = "Terminated"
    FAILED = "Failed"


ACTIVE = frozenset({Status.CONNECTING, Status.CONNECTED, Status.DISCONNECTED})


def new_session_id(caller: str) -> str:
    """``<caller>-<17 hex digits>``, like the ids AWS issues."""
    return f"{caller}-{secrets.token_hex(9)[:17]}"


def new_token() -> str:
    """An opaque token (AWS's are ~300 characters of base64; shape TokenValue max 300)."""
    return secrets.token_urlsafe(96)


@dataclass
class SessionRecord:
    """One session as the API sees it."""

    session_id: str
    target: str
    document_name: str
    properties: dict[str, str]
    owner: str
    reason: str | None = None
    status: Status = Status.CONNECTING
    start_date: float = field(default_factory=time.time)
    end_date: float | None = None
    token: str = field(default_factory=new_token)
    token_issued: float = field(default_factory=time.monotonic)
    end_output: str = ""
    #: ResumeSession calls answered with a token (tests count the client's resumes)
    resumes: int = 0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def issue_token(self) -> str:
        """A fresh token for this session; the previous one stops working."""
        self.token = new_token()
        self.token_issued = time.monotonic()
        return self.token

    def token_valid(self, token: str, ttl: float) -> bool:
        """Whether ``token`` opens this session's data channel now."""
        return (
            self.active
            and secrets.compare_digest(token, self.token)
            and time.monotonic() - self.token_issued <= ttl
        )

    def end(self, status: Status = Status.TERMINATED, output: str = "") -> None:
        if self.active:
            self.status = status
            self.end_date = time.time()
            self.end_output = output

    def describe(self) -> dict[str, Any]:
        """The ``Session`` structure of DescribeSessions (fields as in the AWS CLI examples)."""
        item: dict[str, Any] = {
            "SessionId": self.session_id,
            "Target": self.target,
            "Status": self.status.value,
            "StartDate": self.start_date,
        }
        if self.end_date is not None:
            item["EndDate"] = self.end_date
        item["DocumentName"] = self.document_name
        item["Owner"] = self.owner
        if self.reason:
            item["Reason"] = self.reason
        item["OutputUrl"] = {}
        return item
