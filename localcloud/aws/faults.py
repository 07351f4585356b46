"""Fault rules of the AWS front: "the next N calls of X fail with code C".

AWS fails in ways the hub must handle and moto never does: no capacity in one zone, throttling
when 20 users start at once, a role that lacks a permission, an AMI that was deregistered. A
rule matches calls by service (``ec2``, ``ssm``, ``iam``, ``sts`` or ``*``), action
(``RunInstances``, ``GetParameter`` or ``*``) and optionally parameters (flattened names as
the request carries them, e.g. ``{"SubnetId": "subnet-0abc..."}`` or ``{"InstanceId.1":
"i-*"}``; values are shell-style patterns). A matching call first uses up ``after`` (calls let
through), then the rule *fires* until it has fired ``count`` times (``None``: forever):
the call is answered with ``code`` (and ``message``/``status``, AWS's by default) in the
protocol's wire format, after ``delay`` seconds if set. A rule with ``code=None`` and a delay
only slows calls down. Rules are tried in the order they were added; the first that fires
answers.
"""

from __future__ import annotations

import fnmatch
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

from .wire import AwsRequest, default_message, default_status

_ids = itertools.count(1)


@dataclass
class AwsFaultRule:
    """One rule; see the module docstring."""

    service: str = "*"
    action: str = "*"
    code: str | None = None
    message: str | None = None
    status: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    count: int | None = 1
    after: int = 0
    delay: float = 0.0
    seen: int = 0
    fired: int = 0
    rule_id: int = field(default_factory=lambda: next(_ids))

    def __post_init__(self) -> None:
        if self.code is None and self.delay <= 0:
            raise ValueError("a rule needs an error code, a delay, or both")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be at least 1 (or null: without limit)")
        if self.after < 0 or self.delay < 0:
            raise ValueError("after and delay cannot be negative")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        self.params = {str(k): str(v) for k, v in self.params.items()}

    @property
    def spent(self) -> bool:
        return self.count is not None and self.fired >= self.count

    def matches(self, request: AwsRequest) -> bool:
        if self.service not in ("*", request.service):
            return False
        if not fnmatch.fnmatchcase(request.action, self.action):
            return False
        return all(
            name in request.params and fnmatch.fnmatchcase(request.params[name], pattern)
            for name, pattern in self.params.items()
        )

    def answer(self, request: AwsRequest) -> tuple[str, str, int] | None:
        """(code, message, status) for this request, or None for a delay-only rule."""
        if self.code is None:
            return None
        message = self.message if self.message is not None else default_message(self.code, request)
        return self.code, message, self.status or default_status(self.code)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.rule_id,
            "service": self.service,
            "action": self.action,
            "code": self.code,
            "message": self.message,
            "status": self.status,
            "params": self.params,
            "count": self.count,
            "after": self.after,
            "delay": self.delay,
            "seen": self.seen,
            "fired": self.fired,
        }


class AwsFaults:
    """The rules in force; thread-safe, so tests may add rules from any thread."""

    def __init__(self) -> None:
        self._rules: list[AwsFaultRule] = []
        self._lock = threading.Lock()

    @property
    def rules(self) -> list[AwsFaultRule]:
        with self._lock:
            return list(self._rules)

    def add(self, rule: AwsFaultRule) -> AwsFaultRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule_id: int) -> bool:
        with self._lock:
            before = len(self._rules)
            self._rules = [r for r in self._rules if r.rule_id != rule_id]
            return len(self._rules) != before

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def fire(self, request: AwsRequest) -> AwsFaultRule | None:
        """The rule that fires for this request (its counters updated), if any.

        Spent rules stay listed (with ``fired``) so a test can check they fired.
        """
        with self._lock:
            for rule in self._rules:
                if rule.spent or not rule.matches(request):
                    continue
                rule.seen += 1
                if rule.seen <= rule.after:
                    continue
                rule.fired += 1
                return rule
        return None
