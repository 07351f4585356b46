"""A small IAM policy evaluator: enough of AWS's documented logic to test our own policies.

Why it exists: the templates' promises ("the hub cannot terminate an instance it did not
tag", "an instance reads only its own server's parameters") live in IAM conditions, which no
linter evaluates and moto does not enforce. This module evaluates identity-based policies for
one request the way the IAM User Guide describes it, so tests can ask the questions directly.

What it implements, with the IAM User Guide page each rule comes from:

- *Policy evaluation logic* (identity-based policies of one principal, one account): an
  explicit ``Deny`` in any statement wins; otherwise an ``Allow`` is needed; otherwise the
  request is implicitly denied.
- *IAM JSON policy elements: Action / NotAction, Resource / NotResource*: ``*`` and ``?``
  wildcards; actions compare case-insensitively; an ARN is matched segment by segment
  (partition, service, region, account case-sensitively as written), the last segment as a
  whole, where ``*`` also matches ``/`` and ``:``.
- *IAM JSON policy elements: Condition operators*: ``StringEquals``, ``StringNotEquals``,
  ``StringEqualsIgnoreCase``, ``StringLike``, ``StringNotLike``, ``ArnEquals``, ``ArnLike``,
  ``ArnNotEquals``, ``ArnNotLike``, ``Bool``, ``Null``; the ``IfExists`` suffix; the
  ``ForAllValues:`` / ``ForAnyValue:`` set operators. Several keys in one operator, and
  several operators in one block, must all hold; several values of one key are OR-ed (for a
  negated operator: the key matches none of them). A key missing from the request makes a
  positive operator false and a negated one true (unless ``IfExists``, which is then true);
  ``ForAllValues`` over a missing key is true, ``ForAnyValue`` false.
- *IAM policy elements: Variables and tags*: ``${key}`` in ``Resource`` and in condition
  values is replaced by the request's value of that key; ``${*}``, ``${?}``, ``${$}`` are the
  literal characters. A variable whose key is not in the request makes that value match
  nothing (we treat the statement's resource or condition value as unmatched).
- Condition key names compare case-insensitively (the tag-key part too, as IAM does for
  ``aws:ResourceTag``).

What it does not do: resource-based policies (key policies, trust policies), permission
boundaries, SCPs, session policies, cross-account rules, and every other operator (numeric,
date, IP, binary). It knows nothing about which keys AWS actually puts in a request: the
caller builds the request context, and the tests say which documentation page the context
follows. Passing here means "our policy text says what we think under the documented rules",
not "AWS will accept it".
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

ContextValue = str | bool | Sequence[str]


class Decision(Enum):
    ALLOW = "Allow"
    EXPLICIT_DENY = "ExplicitDeny"
    IMPLICIT_DENY = "ImplicitDeny"


@dataclass(frozen=True)
class Request:
    """One authorisation question: may this principal do ``action`` on ``resource``?

    ``context`` holds the request's condition keys (any case), values as strings, booleans
    or lists of strings (multivalued keys such as ``aws:TagKeys``).
    """

    action: str
    resource: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)

    def value(self, key: str) -> ContextValue | None:
        folded = key.casefold()
        for k, v in self.context.items():
            if k.casefold() == folded:
                return v
        return None


def evaluate(policies: Iterable[Mapping[str, Any]], request: Request) -> Decision:
    """The decision of the identity-based ``policies`` (all attached to one principal)."""
    allowed = False
    for policy in policies:
        for statement in _statements(policy):
            if not _applies(statement, request):
                continue
            if statement["Effect"] == "Deny":
                return Decision.EXPLICIT_DENY
            allowed = True
    return Decision.ALLOW if allowed else Decision.IMPLICIT_DENY


def is_allowed(policies: Iterable[Mapping[str, Any]], request: Request) -> bool:
    return evaluate(list(policies), request) is Decision.ALLOW


def matching_sids(policies: Iterable[Mapping[str, Any]], request: Request) -> list[str]:
    """The ``Sid`` of every statement that applies to ``request`` (for failure messages)."""
    return [
        str(s.get("Sid", "?")) for p in policies for s in _statements(p) if _applies(s, request)
    ]


def _statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    statements = policy["Statement"]
    return [statements] if isinstance(statements, Mapping) else list(statements)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _applies(statement: Mapping[str, Any], request: Request) -> bool:
    if "Action" in statement:
        if not any(_action_matches(p, request.action) for p in _as_list(statement["Action"])):
            return False
    elif any(_action_matches(p, request.action) for p in _as_list(statement["NotAction"])):
        return False
    if "Resource" in statement:
        patterns = _as_list(statement["Resource"])
        if not any(_resource_matches(p, request) for p in patterns):
            return False
    elif "NotResource" in statement:
        if any(_resource_matches(p, request) for p in _as_list(statement["NotResource"])):
            return False
    return all(
        _operator_holds(operator, keys, request)
        for operator, keys in statement.get("Condition", {}).items()
    )


def _action_matches(pattern: str, action: str) -> bool:
    return fnmatch.fnmatchcase(action.casefold(), pattern.casefold())


_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_LITERALS = {"*": "*", "?": "?", "$": "$"}


class _Unresolved(Exception):
    pass


def _substitute(text: str, request: Request, *, for_glob: bool) -> str:
    """``text`` with policy variables replaced; raises `_Unresolved` for a missing key."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in _LITERALS:
            literal = _LITERALS[name]
            return f"[{literal}]" if for_glob and literal in "*?" else literal
        value = request.value(name)
        if value is None or isinstance(value, list | tuple):
            raise _Unresolved(name)
        text = str(value).lower() if isinstance(value, bool) else str(value)
        # A substituted value is data, never a wildcard.
        return re.sub(r"([*?\[])", r"[\1]", text) if for_glob else text

    return _VARIABLE.sub(replace, text)


def _resource_matches(pattern: str, request: Request) -> bool:
    try:
        pattern = _substitute(pattern, request, for_glob=True)
    except _Unresolved:
        return False
    return _arn_like(request.resource, pattern)


def _arn_like(arn: str, pattern: str) -> bool:
    if pattern == "*":
        return True
    got = arn.split(":", 5)
    want = pattern.split(":", 5)
    if len(got) != 6 or len(want) != 6:
        return fnmatch.fnmatchcase(arn, pattern)
    return all(fnmatch.fnmatchcase(g, w) for g, w in zip(got, want, strict=True))


_NEGATED = {"StringNotEquals", "StringNotLike", "ArnNotEquals", "ArnNotLike"}


def _compare(base: str, actual: str, wanted: str, request: Request) -> bool:
    try:
        glob = base in ("StringLike", "StringNotLike") or base.startswith("Arn")
        wanted = _substitute(wanted, request, for_glob=glob)
    except _Unresolved:
        return False
    if base in ("StringEquals", "StringNotEquals"):
        return actual == wanted
    if base == "StringEqualsIgnoreCase":
        return actual.casefold() == wanted.casefold()
    if base in ("StringLike", "StringNotLike"):
        return fnmatch.fnmatchcase(actual, wanted)
    if base in ("ArnEquals", "ArnNotEquals", "ArnLike", "ArnNotLike"):
        # The IAM User Guide documents ArnEquals and ArnLike alike: per-segment, wildcards.
        return _arn_like(actual, wanted)
    if base == "Bool":
        return actual.lower() == wanted.lower()
    raise NotImplementedError(f"condition operator {base} is not implemented here")


def _operator_holds(operator: str, keys: Mapping[str, Any], request: Request) -> bool:
    set_op = None
    if ":" in operator:
        set_op, operator = operator.split(":", 1)
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    for key, wanted in keys.items():
        wanted_values = [
            str(w).lower() if isinstance(w, bool) else str(w) for w in _as_list(wanted)
        ]
        present = request.value(key)
        if base == "Null":
            is_null = present is None or present == []
            if not any((w.lower() == "true") == is_null for w in wanted_values):
                return False
            continue
        if present is None:
            if set_op == "ForAllValues" or if_exists:
                continue
            if set_op == "ForAnyValue":
                return False
            if base in _NEGATED:
                continue
            return False
        actual_values = [
            str(v).lower() if isinstance(v, bool) else str(v) for v in _as_list(present)
        ]
        positive = base.replace("Not", "", 1) if base in _NEGATED else base

        def one(actual: str, positive: str = positive, wanted: list[str] = wanted_values) -> bool:
            hit = any(_compare(positive, actual, w, request) for w in wanted)
            return not hit if base in _NEGATED else hit

        if set_op == "ForAllValues":
            ok = all(one(a) for a in actual_values)
        elif set_op == "ForAnyValue":
            ok = any(one(a) for a in actual_values)
        else:
            if len(actual_values) != 1:
                # A multivalued key needs a set operator; without one IAM compares nothing.
                ok = base in _NEGATED
            else:
                ok = one(actual_values[0])
        if not ok:
            return False
    return True
