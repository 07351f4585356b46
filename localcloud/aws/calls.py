"""The log of AWS calls that came through the front, for tests and benchmarks.

Tests assert on what the hub asked AWS (which subnet a retry went to, how many attempts boto3
made under throttling); benchmarks count ``DescribeInstances`` calls to check that one poller
serves every server. Each record keeps the service, action, attempt number and parameters,
never a secret: parameter values (``PutParameter``'s ``Value``), credentials and user data are
replaced by a placeholder, long values are cut.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .wire import AwsRequest

log = logging.getLogger(__name__)

MAX_VALUE = 256
#: parameter names (last dotted segment) whose value is never recorded
SECRET_NAMES = frozenset(
    {"SecretAccessKey", "SessionToken", "Password", "PrivateKey", "TokenValue", "SecretString"}
)


def redact(service: str, action: str, params: dict[str, str]) -> dict[str, str]:
    """The parameters as the log may keep them."""
    out: dict[str, str] = {}
    for name, value in params.items():
        last = name.rpartition(".")[2]
        if last in SECRET_NAMES or (service == "ssm" and name == "Value"):
            out[name] = "<redacted>"
        elif last == "UserData":
            out[name] = f"<{len(value)} characters>"
        elif len(value) > MAX_VALUE:
            out[name] = value[:MAX_VALUE] + f"...<{len(value)} characters>"
        else:
            out[name] = value
    return out


@dataclass
class CallRecord:
    """One request the front answered (one boto3 *attempt*)."""

    seq: int
    service: str
    action: str
    params: dict[str, str]
    attempt: int
    invocation_id: str
    time: float = field(default_factory=time.time)
    #: HTTP status of the answer (0 while in flight)
    status: int = 0
    #: error code of the answer, "" for a success
    error: str = ""
    #: id of the fault rule that answered, if one did
    fault: int | None = None
    #: answered from the ClientToken record instead of moto
    replayed: bool = False
    #: which backend answered: "moto", "ssm", "front"
    backend: str = ""
    #: the answer's body, while the listeners run, for the buffered actions only (the
    #: simulator reads CreateSnapshot's snapshot id); not kept in the log
    answer: bytes = field(default=b"", repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "service": self.service,
            "action": self.action,
            "params": self.params,
            "attempt": self.attempt,
            "invocationId": self.invocation_id,
            "status": self.status,
            "error": self.error,
            "fault": self.fault,
            "replayed": self.replayed,
            "backend": self.backend,
        }


Listener = Callable[[CallRecord], None]


class CallLog:
    """The last ``limit`` calls, with increasing ``seq`` numbers (so readers can page)."""

    def __init__(self, limit: int = 20_000) -> None:
        self._records: deque[CallRecord] = deque(maxlen=limit)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self.listeners: list[Listener] = []

    def start(self, request: AwsRequest) -> CallRecord:
        """Record a call as it arrives."""
        record = CallRecord(
            seq=next(self._seq),
            service=request.service,
            action=request.action,
            params=redact(request.service, request.action, request.params),
            attempt=request.attempt,
            invocation_id=request.invocation_id,
        )
        with self._lock:
            self._records.append(record)
        return record

    def finish(self, record: CallRecord, status: int, error: str = "") -> None:
        """The answer went out: record it and tell the listeners (the instance simulator)."""
        record.status = status
        record.error = error
        for listener in list(self.listeners):
            try:
                listener(record)
            except Exception:  # a listener's bug must not break the answer
                log.exception("call-log listener %r failed", listener)

    def records(
        self, *, service: str | None = None, action: str | None = None, since: int = 0
    ) -> list[CallRecord]:
        with self._lock:
            records = list(self._records)
        return [
            r
            for r in records
            if r.seq > since
            and (service is None or r.service == service)
            and (action is None or r.action == action)
        ]

    def count(self, service: str | None = None, action: str | None = None) -> int:
        return len(self.records(service=service, action=action))

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._records[-1].seq if self._records else 0
