"""Fault injection on the data channel: lose, repeat, reorder and hold back messages.

The real path between the hub and an agent crosses the internet and the Message Gateway
Service; the protocol's sequence numbers, acknowledgements and retransmissions exist because
messages do get lost, repeated and reordered, and websockets do drop mid-transfer. Tests of
the client need to cause each of those on demand, reproducibly.

A rule applies to the binary messages of one direction (``to_agent``: client -> agent,
``to_client``: agent -> client, or ``both``) of one session (or all sessions), optionally only
to some message types (``input_stream_data``, ``output_stream_data``, ``acknowledge``, ...).
Each matching message first uses up ``after`` (messages let through untouched), then the rule
*fires* with ``probability`` (seeded, so a run can be repeated) until it has fired ``count``
times (``None``: without limit). Firing means, by ``kind``:

``drop``       the message is not delivered;
``duplicate``  it is delivered twice;
``reorder``    it is held back and delivered right after the next message of that direction
               that the rule would match (or after ``hold`` seconds if none comes);
``delay``      it is delivered ``delay`` seconds later (later messages may overtake it);
``close``      the websocket is closed abruptly instead (no close frame, no
               ``channel_closed``): the session survives, ``Disconnected``, and can be resumed.

The token frame is never subject to faults, and neither is the control API.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["drop", "duplicate", "reorder", "delay", "close"]
Direction = Literal["to_agent", "to_client", "both"]
KINDS: tuple[str, ...] = ("drop", "duplicate", "reorder", "delay", "close")
DIRECTIONS: tuple[str, ...] = ("to_agent", "to_client", "both")

_ids = itertools.count(1)


def message_type_of(frame: bytes) -> str:
    """The MessageType field of an encoded message (bytes 4..36), without decoding the rest."""
    return frame[4:36].rstrip(b" \x00").decode("ascii", "replace")


@dataclass
class FaultRule:
    """One rule; see the module docstring for the meaning of each field."""

    kind: Kind
    direction: Direction = "both"
    session_id: str | None = None
    message_types: frozenset[str] | None = None
    probability: float = 1.0
    count: int | None = 1
    after: int = 0
    delay: float = 0.0
    hold: float = 0.05
    seed: int | None = None
    fired: int = 0
    seen: int = 0
    rule_id: int = field(default_factory=lambda: next(_ids))

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be at least 1 (or null: without limit)")
        if self.after < 0 or self.delay < 0 or self.hold < 0:
            raise ValueError("after, delay and hold cannot be negative")
        if self.kind == "delay" and self.delay <= 0:
            raise ValueError("a delay rule needs a positive delay")
        if self.message_types is not None:
            self.message_types = frozenset(self.message_types)
        self._rng = random.Random(self.seed)

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.fired >= self.count

    def matches(self, session_id: str, direction: str, message_type: str) -> bool:
        if self.session_id is not None and self.session_id != session_id:
            return False
        if self.direction != "both" and self.direction != direction:
            return False
        return self.message_types is None or message_type in self.message_types

    def decide(self) -> bool:
        """Called for each matching message: whether the rule fires on it."""
        self.seen += 1
        if self.seen <= self.after or self.exhausted:
            return False
        if self.probability < 1.0 and self._rng.random() >= self.probability:
            return False
        self.fired += 1
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.rule_id,
            "kind": self.kind,
            "direction": self.direction,
            "sessionId": self.session_id,
            "messageTypes": sorted(self.message_types) if self.message_types else None,
            "probability": self.probability,
            "count": self.count,
            "after": self.after,
            "delay": self.delay,
            "hold": self.hold,
            "seed": self.seed,
            "fired": self.fired,
            "seen": self.seen,
        }


class FaultInjector:
    """The active rules, shared by every data channel of the stand-in."""

    def __init__(self) -> None:
        self.rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        return rule

    def remove(self, rule_id: int) -> bool:
        before = len(self.rules)
        self.rules = [r for r in self.rules if r.rule_id != rule_id]
        return len(self.rules) != before

    def clear(self, session_id: str | None = None) -> None:
        """Remove every rule, or those of one session."""
        if session_id is None:
            self.rules.clear()
        else:
            self.rules = [r for r in self.rules if r.session_id != session_id]

    def take(self, session_id: str, direction: str, frame: bytes) -> FaultRule | None:
        """The first rule that fires on this message (rules are consulted in order)."""
        message_type = message_type_of(frame)
        for rule in self.rules:
            if rule.matches(session_id, direction, message_type) and rule.decide():
                if rule.exhausted:
                    self.rules.remove(rule)
                return rule
        return None


class FaultyPipe:
    """One direction of one websocket, carrying frames through the injector's rules.

    ``deliver`` receives the frames that go through (a list, so the far side can write them in
    one batch); ``abort`` closes the websocket abruptly. ``call_later`` is the event loop's.
    """

    def __init__(
        self,
        injector: FaultInjector,
        session_id: str,
        direction: str,
        deliver: Callable[[list[bytes]], None],
        abort: Callable[[], None],
        call_later: Callable[..., Any],
    ) -> None:
        self._injector = injector
        self._session_id = session_id
        self._direction = direction
        self._deliver = deliver
        self._abort = abort
        self._call_later = call_later
        self._held: list[tuple[bytes, frozenset[str] | None]] = []
        self._hold_timer: Any = None
        self._timers: set[Any] = set()
        self.closed = False

    def push(self, frames: Iterable[bytes]) -> None:
        """Send frames on, as the rules decide."""
        if self.closed:
            return
        if not self._injector.rules and not self._held:
            out = frames if isinstance(frames, list) else list(frames)
            if out:
                self._deliver(out)
            return
        out: list[bytes] = []
        for frame in frames:
            rule = self._injector.take(self._session_id, self._direction, frame)
            if rule is None:
                out.append(frame)
                out.extend(self._release_held(frame))
            elif rule.kind == "drop":
                continue
            elif rule.kind == "duplicate":
                out.extend((frame, frame))
                out.extend(self._release_held(frame))
            elif rule.kind == "reorder":
                self._held.append((frame, rule.message_types))
                self._arm_hold_timer(rule.hold)
            elif rule.kind == "delay":
                self._deliver_later(rule.delay, frame)
            elif rule.kind == "close":
                if out:
                    self._deliver(out)
                self.close()
                self._abort()
                return
        if out:
            self._deliver(out)

    def close(self) -> None:
        """Forget held and delayed frames: they were in flight on a connection now gone."""
        self.closed = True
        self._held.clear()
        for timer in (*self._timers, self._hold_timer):
            if timer is not None:
                timer.cancel()
        self._timers.clear()
        self._hold_timer = None

    def _release_held(self, passed: bytes | None = None) -> list[bytes]:
        """Held frames that may go now: all of them, or (after ``passed`` went through)
        those whose rule would have matched ``passed``: a reordered data message is
        overtaken by the next data message, not by an ack."""
        if not self._held:
            return []
        if passed is None:
            release, keep = self._held, []
        else:
            kind = message_type_of(passed)
            release, keep = [], []
            for frame, types in self._held:
                (release if types is None or kind in types else keep).append((frame, types))
        self._held = keep
        if not keep and self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        return [frame for frame, _types in release]

    def _arm_hold_timer(self, hold: float) -> None:
        if self._hold_timer is None:
            self._hold_timer = self._call_later(hold, self._flush_held)

    def _flush_held(self) -> None:
        self._hold_timer = None
        held = self._release_held()
        if held and not self.closed:
            self._deliver(held)

    def _deliver_later(self, delay: float, frame: bytes) -> None:
        handle: list[Any] = []

        def fire() -> None:
            self._timers.discard(handle[0])
            if not self.closed:
                self._deliver([frame])

        handle.append(self._call_later(delay, fire))
        self._timers.add(handle[0])
