"""The AWS front's test/control API under ``/_control/`` (not part of AWS; loopback only).

======  ==========================  ==========================================================
method  path                        body / answer
======  ==========================  ==========================================================
GET     /_control/faults            ``{"faults": [rule, ...]}`` (spent rules too, with counts)
POST    /_control/faults            ``{"service", "action", "code", "message", "status",
                                    "params": {name: pattern}, "count", "after", "delay"}``
                                    -> 201 rule
DELETE  /_control/faults            remove every rule -> 204
DELETE  /_control/faults/{id}       remove one -> 204 (404 if none)
GET     /_control/calls             ``?service=ec2&action=DescribeInstances&since=<seq>``
                                    -> ``{"calls": [...], "count": n, "last": seq}``
DELETE  /_control/calls             forget the log -> 204
======  ==========================  ==========================================================

A rule that names no ``code`` needs a ``delay`` (a slow call); ``count: null`` fires forever.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..control_api import ControlError, ControlHandler
from .calls import CallLog
from .faults import AwsFaultRule, AwsFaults


class AwsFront(Protocol):
    """What the control API reaches of the front (`localcloud.aws.front.AwsFront`)."""

    faults: AwsFaults
    calls: CallLog


_FIELDS: dict[str, Any] = {
    "service": str,
    "action": str,
    "code": str,
    "message": str,
    "status": int,
    "count": int,
    "after": int,
    "delay": float,
}


class FaultsHandler(ControlHandler):
    standin: AwsFront

    def get(self) -> None:
        self.reply({"faults": [r.to_json() for r in self.standin.faults.rules]})

    def post(self) -> None:
        body = self.body_json()
        unknown = set(body) - {*_FIELDS, "params"}
        if unknown:
            raise ControlError(400, f"unknown fields: {', '.join(sorted(unknown))}")
        options: dict[str, Any] = {}
        try:
            for key, cast in _FIELDS.items():
                if key in body:
                    options[key] = None if body[key] is None else cast(body[key])
            params = body.get("params") or {}
            if not isinstance(params, dict):
                raise ControlError(400, "params must be an object of name -> pattern")
            rule = self.standin.faults.add(AwsFaultRule(params=params, **options))
        except (TypeError, ValueError) as exc:
            raise ControlError(400, f"bad fault: {exc}") from exc
        self.reply(rule.to_json(), 201)

    def delete(self) -> None:
        self.standin.faults.clear()
        self.reply(None, 204)


class FaultHandler(ControlHandler):
    standin: AwsFront

    def delete(self, rule_id: str) -> None:
        if not self.standin.faults.remove(int(rule_id)):
            raise ControlError(404, f"no fault {rule_id}")
        self.reply(None, 204)


class CallsHandler(ControlHandler):
    standin: AwsFront

    def get(self) -> None:
        try:
            since = int(self.get_query_argument("since", "0"))
        except ValueError as exc:
            raise ControlError(400, "since must be a sequence number") from exc
        records = self.standin.calls.records(
            service=self.get_query_argument("service", None),
            action=self.get_query_argument("action", None),
            since=since,
        )
        self.reply(
            {
                "calls": [r.to_json() for r in records],
                "count": len(records),
                "last": self.standin.calls.last_seq,
            }
        )

    def delete(self) -> None:
        self.standin.calls.clear()
        self.reply(None, 204)


def control_routes(front: AwsFront) -> list[tuple[str, type, dict[str, Any]]]:
    args = {"standin": front}
    return [
        (r"/_control/faults", FaultsHandler, args),
        (r"/_control/faults/(\d+)", FaultHandler, args),
        (r"/_control/calls", CallsHandler, args),
    ]
