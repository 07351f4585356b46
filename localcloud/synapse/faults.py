"""Fault injection: make the next N requests to a path fail or stall.

Real Synapse has bad minutes (502s from the load balancer, 503 when it is read-only, slow
token calls); the hub must cope with them, so tests need to cause them on demand. A fault
matches requests by path (a shell-style pattern, e.g. ``/auth/v1/oauth2/*``) and optionally by
method; each matching request uses up one of its ``count``. A fault with a ``delay`` holds the
request that long first; with a ``status`` it then answers with that status and ``body``
instead of the real response (without a status the real handler runs after the delay).
A ``body`` that is not text is sent as JSON.
The ``/_control/`` API itself is never faulted.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
from dataclasses import asdict, dataclass, field
from typing import Any

_ids = itertools.count(1)


@dataclass
class Fault:
    """One injected fault; ``remaining`` counts down to zero, then the fault is gone."""

    path: str
    remaining: int = 1
    status: int | None = None
    body: Any = ""
    content_type: str = "application/json"
    delay: float = 0.0
    method: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    fault_id: int = field(default_factory=lambda: next(_ids))

    def matches(self, method: str, path: str) -> bool:
        """Whether a request is one this fault applies to."""
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return fnmatch.fnmatchcase(path, self.path)

    def payload(self) -> bytes:
        """The response body: text as UTF-8, anything else as JSON."""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body, separators=(",", ":")).encode("utf-8")

    def to_json(self) -> dict[str, Any]:
        """JSON form for the control API."""
        data = asdict(self)
        if isinstance(self.body, bytes):
            data["body"] = self.body.decode("utf-8", "replace")
        return data


class FaultInjector:
    """The list of active faults, consulted by every non-control request."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []

    def add(
        self,
        path: str,
        *,
        count: int = 1,
        status: int | None = None,
        body: Any = "",
        content_type: str = "application/json",
        delay: float = 0.0,
        method: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Register a fault for the next ``count`` matching requests.

        ``body`` is sent as is when it is text or bytes, and as JSON otherwise.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        if status is None and delay <= 0:
            raise ValueError("a fault needs a status, a delay, or both")
        if status is not None and not 100 <= status <= 599:
            raise ValueError(f"not an HTTP status: {status}")
        fault = Fault(
            path=path,
            remaining=count,
            status=status,
            body=body,
            content_type=content_type,
            delay=max(delay, 0.0),
            method=method,
            headers=dict(headers or {}),
        )
        self.faults.append(fault)
        return fault

    def take(self, method: str, path: str) -> Fault | None:
        """The first fault matching this request, with one use consumed, or ``None``."""
        for fault in self.faults:
            if fault.matches(method, path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def clear(self) -> None:
        """Remove every fault."""
        self.faults.clear()
