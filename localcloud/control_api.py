"""The base of every stand-in's ``/_control/`` API: loopback only, JSON in and out.

The control APIs are not part of the services they stand in for; they let tests and the demo
change the world behind a stand-in's back. They share these rules so a test talks to each
the same way: answers only loopback clients, a JSON object body, ``{"error": ...}`` on failure.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import tornado.web


class ControlError(Exception):
    """A control-API error: status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class ControlHandler(tornado.web.RequestHandler):
    """Subclasses get the stand-in object as ``self.standin``."""

    def initialize(self, standin: Any) -> None:
        self.standin = standin

    def prepare(self) -> None:
        try:
            loopback = ipaddress.ip_address(self.request.remote_ip or "").is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ControlError(403, "the control API answers loopback clients only")

    def body_json(self) -> dict[str, Any]:
        """The request body as a JSON object ({} when empty)."""
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except ValueError as exc:
            raise ControlError(400, f"invalid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ControlError(400, "the body must be a JSON object")
        return body

    def reply(self, obj: Any, status: int = 200) -> None:
        """Answer with JSON (no body for 204)."""
        self.set_status(status)
        if status == 204:
            self.finish()
            return
        self.set_header("Content-Type", "application/json")
        self.finish(_dumps(obj))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ControlError):
            status, message = exc.status, exc.message
        else:
            status, message = status_code, self._reason
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(_dumps({"error": message}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not isinstance(value, ControlError):
            super().log_exception(typ, value, tb)
