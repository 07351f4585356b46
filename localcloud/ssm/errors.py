"""SSM's error responses (AWS JSON 1.1 protocol), as exceptions.

An AWS JSON 1.1 service answers an error with HTTP 400 (500 for its own faults) and a body
``{"__type": "<ErrorShape>", "<message member>": "..."}``; botocore reads the code from
``__type`` and the text from ``message`` or ``Message``. The member name is the one the error
shape declares in SSM's service model (botocore ``data/ssm/2014-11-06/service-2.json``): most
SSM errors declare ``Message``, ``InvalidInstanceInformationFilterValue`` declares ``message``,
so the stand-in writes the key each shape declares.
"""

from __future__ import annotations

import json
from typing import Any

# Error shapes whose message member is spelled in lower case in SSM's service model.
_LOWERCASE_MESSAGE = frozenset({"InvalidInstanceInformationFilterValue"})


def dumps(obj: Any) -> bytes:
    """Compact JSON, as AWS services send it."""
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class AwsError(Exception):
    """An error answer: the shape name (``__type``), its message, and the HTTP status."""

    def __init__(self, code: str, message: str = "", *, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    def body(self) -> dict[str, Any]:
        """The JSON object of the response."""
        body: dict[str, Any] = {"__type": self.code}
        if self.message:
            key = "message" if self.code in _LOWERCASE_MESSAGE else "Message"
            body[key] = self.message
        return body


def validation_error(field: str, value: Any, constraint: str) -> AwsError:
    """A ``ValidationException`` worded as AWS words input-constraint failures."""
    return AwsError(
        "ValidationException",
        f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy "
        f"constraint: {constraint}",
    )


def unknown_operation() -> AwsError:
    """What an AWS JSON endpoint answers for an ``X-Amz-Target`` it does not know."""
    return AwsError("UnknownOperationException")
