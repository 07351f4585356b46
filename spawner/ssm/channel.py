"""Sequencing, acknowledgement, retransmission and handshake of one SSM data channel.

Sans-I/O in the h11 style: feed websocket frames to `ChannelConnection.receive`, application
bytes to `ChannelConnection.send_data`, the time to `ChannelConnection.tick`; write what
`ChannelConnection.frames_to_send` returns. Nothing here reads a clock or touches a socket, so
the rules can be exercised with a simulated network and clock.

The rules are those of the Go peers: the plugin's ``src/datachannel/streaming.go`` and
``src/config/config.go`` for the CLIENT role, the agent's ``agent/session/datachannel`` and
``agent/session/config`` for the AGENT role (which the local stand-in plays). Where the two
differ the role decides; where both would lose data or stall we do better and say so below.

Retransmission. Every stream-data message waits in a resend buffer until its ack arrives. A
resend check runs at most every 100 ms (driven by `tick`) and retransmits one message: the
oldest one, once it has waited a retransmission timeout (RTO). The RTO starts at 200 ms and
follows RFC 6298 (SRTT starts at 100 ms, RTTVAR at 0, gains 1/8 and 1/4, clock granularity
10 ms) with a 1 s cap and no floor.

- CLIENT, as the plugin: the resend timer is never restarted (Go updates a copy of the buffer
  entry), so once the oldest message is overdue it is resent on every check, and its round
  trip is measured from the first transmission. After 3000 resends of one message (5 minutes
  at 100 ms) `GaveUp` is reported and retransmission stops.
- AGENT: the timer restarts on each resend. Unlike the real agent, which only ever looks at
  the oldest message, a resent message goes to the back of the queue: the official client
  never re-acknowledges a duplicate, so a single lost ack would otherwise stall every later
  retransmission for good. The agent has no give-up limit.

Backpressure. The resend buffer holds at most 10,000 messages (CLIENT) or 100,000 (AGENT);
where the Go peers then silently drop messages, messages beyond the limit wait here, unsent,
until acks make room. `send_data` always accepts everything; callers stop reading their own
sources while `can_send` is false (`send_window` says how many 1024-byte messages still fit).

Pacing. The plugin sleeps about 1 ms after each stream-data message it sends
(``portsession/muxportforwarding.go`` transferDataToServer; the basic-mode loop likewise), so
a session carries at most about 1,000 messages a second from the client, which is what the
service is reported to carry. ``pace`` (messages per second) makes the same rule a token
bucket: ``pace_burst`` messages may leave at once (so a small request waits for nothing), and
the rest leave as tokens accrue, driven by `tick` and `next_deadline`. Retransmissions and
control messages (acks, handshake) are not paced, as in the plugin, whose resend scheduler and
ack writer do not sleep. The stand-in's agent uses the same bucket to model the service's rate.

Resuming. After the websocket under a session was replaced (``ResumeSession``), the peer may
have lost any message sent on the old one: `resend_all` puts every unacknowledged message on
the wire again, in order (go-back-N), instead of leaving the repair to the resend check,
which retransmits one message per 100 ms and would need minutes for a full window.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .messages import (
    ACK_FLAGS,
    ACK_TEMPLATE,
    KMS_ENCRYPTION_ACTION,
    MAX_PAYLOAD,
    SESSION_TYPE_ACTION,
    SYN,
    ActionStatus,
    Flag,
    HandshakeRequest,
    MessageType,
    PayloadType,
    ProcessedAction,
    ProtocolError,
    ack_sequence_number,
    decode_raw,
    encode_raw,
    flag_payload,
    handshake_complete,
    handshake_request,
    handshake_response_payload,
    padded_type,
    parse_channel_closed,
    parse_flag,
    parse_handshake_complete,
    parse_handshake_request,
    parse_handshake_response,
    processed_action,
    wire_id_str,
)

# Timing, in seconds (plugin src/config/config.go; the agent's session/config is the same).
INITIAL_RTO = 0.2
INITIAL_SRTT = 0.1
INITIAL_RTTVAR = 0.0
RTT_GAIN = 1.0 / 8.0
RTTVAR_GAIN = 1.0 / 4.0
CLOCK_GRANULARITY = 0.01
MAX_RTO = 1.0
RESEND_CHECK_INTERVAL = 0.1
MAX_RESEND_ATTEMPTS = 3000
HANDSHAKE_TIMEOUT = 15.0  # the agent gives up on an unanswered handshake request

CLIENT_BUFFER_CAPACITY = 10_000
AGENT_BUFFER_CAPACITY = 100_000


class Role(Enum):
    CLIENT = "client"
    AGENT = "agent"


# --- events --------------------------------------------------------------------------------


class Event:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class HandshakeRequested(Event):
    """CLIENT: the agent asked for a session; the response is already queued."""

    agent_version: str
    session_type: str | None
    properties: Any


@dataclass(frozen=True, slots=True)
class HandshakeCompleted(Event):
    """CLIENT: HandshakeComplete arrived, data may flow. AGENT: it was just sent."""

    time_to_complete_ns: int
    customer_message: str


@dataclass(frozen=True, slots=True)
class HandshakeResponded(Event):
    """AGENT: the client answered; HandshakeComplete follows only if every action succeeded."""

    client_version: str
    actions: tuple[ProcessedAction, ...]


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """Output payload bytes, in order and exactly once (consecutive ones are joined)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class FlagReceived(Event):
    flag: Flag


@dataclass(frozen=True, slots=True)
class ChannelClosed(Event):
    session_id: str
    output: str


@dataclass(frozen=True, slots=True)
class PublicationPaused(Event):
    pass


@dataclass(frozen=True, slots=True)
class PublicationStarted(Event):
    pass


@dataclass(frozen=True, slots=True)
class GaveUp(Event):
    reason: str


# --- internals -----------------------------------------------------------------------------

_ACK_FIELD = padded_type(MessageType.ACKNOWLEDGE)
_OUTPUT = int(PayloadType.OUTPUT)
_FLAG = int(PayloadType.FLAG)
_HS_REQUEST = int(PayloadType.HANDSHAKE_REQUEST)
_HS_RESPONSE = int(PayloadType.HANDSHAKE_RESPONSE)
_HS_COMPLETE = int(PayloadType.HANDSHAKE_COMPLETE)
_ENC_REQUEST = int(PayloadType.ENC_CHALLENGE_REQUEST)
_ENC_RESPONSE = int(PayloadType.ENC_CHALLENGE_RESPONSE)
_CLIENT_CONTROL = frozenset({_HS_REQUEST, _HS_COMPLETE, _ENC_REQUEST})
_AGENT_CONTROL = frozenset({_HS_RESPONSE, _ENC_RESPONSE})

# what to do with an in-order stream-data message
_DELIVER, _HOLD, _DISCARD = 0, 1, 2

_ID_BATCH = 1024
#: a token that accrued to within rounding of a whole one counts (clocks are floats)
_PACE_EPSILON = 1e-3


def _fresh_ids() -> bytes:
    """A batch of random version-4 UUIDs, already in wire order (bytes 8..15, then 0..7)."""
    raw = bytearray(os.urandom(16 * _ID_BATCH))
    parts = []
    for k in range(0, len(raw), 16):
        raw[k + 6] = (raw[k + 6] & 0x0F) | 0x40
        raw[k + 8] = (raw[k + 8] & 0x3F) | 0x80
        parts.append(raw[k + 8 : k + 16])
        parts.append(raw[k : k + 8])
    return b"".join(parts)


class _Pending:
    """A sent message awaiting its ack (``sent``: the time the resend timer runs from)."""

    __slots__ = ("attempts", "frame", "sent")

    def __init__(self, frame: bytes, sent: float) -> None:
        self.frame = frame
        self.sent = sent
        self.attempts = 0


class ChannelConnection:
    """One end of a data channel; see the module docstring for the rules."""

    def __init__(
        self,
        role: Role,
        *,
        now: float,
        client_version: str = "1.2.0.0",
        agent_version: str = "3.3.0.0",
        session_type: str = "Port",
        properties: Any = None,
        resend_buffer: int | None = None,
        reack_duplicates: bool | None = None,
        epoch_offset: float = 0.0,
        pace: float | None = None,
        pace_burst: int = 64,
    ) -> None:
        """``resend_buffer`` overrides the role's resend buffer capacity (messages).

        ``pace``: stream-data messages per second at most (None: unpaced), with bursts of up
        to ``pace_burst`` messages (see the module docstring).

        ``reack_duplicates`` overrides the role's duplicate rule (CLIENT: drop silently, as the
        plugin does; AGENT: acknowledge again, as the agent does). ``epoch_offset`` is added to
        ``now`` for the CreatedDate field, which carries epoch milliseconds: pass
        ``time.time() - loop.time()`` when ``now`` is a monotonic clock.
        """
        # Long: the state machine's whole state, set in one place, each field documented.
        self.role = role
        self._agent = agent = role is Role.AGENT
        self.session_type = session_type
        self.properties = properties
        # CLIENT: its own version; AGENT: learnt from the handshake response.
        self.client_version: str | None = None if agent else client_version
        # AGENT: its own version; CLIENT: learnt from the handshake request.
        self.agent_version: str | None = agent_version if agent else None
        self.handshake_complete = False
        self.handshake_error: str | None = None
        self.ready = False  # AGENT: the TCP side can take data (see set_ready)
        self.paused = False  # AGENT: the service said pause_publication
        self.closed = False  # channel_closed received
        self.gave_up = False
        self.rto = INITIAL_RTO
        self._srtt = INITIAL_SRTT
        self._rttvar = INITIAL_RTTVAR
        self._epoch_offset = epoch_offset
        self._reack = agent if reack_duplicates is None else bool(reack_duplicates)
        if resend_buffer is None:
            resend_buffer = AGENT_BUFFER_CAPACITY if agent else CLIENT_BUFFER_CAPACITY
        if resend_buffer < 1:
            raise ValueError("resend_buffer must be at least 1")
        self._capacity = resend_buffer
        self._in_capacity = AGENT_BUFFER_CAPACITY if agent else CLIENT_BUFFER_CAPACITY
        if agent:
            self._send_field = padded_type(MessageType.OUTPUT_STREAM_DATA)
            self._recv_type = MessageType.INPUT_STREAM_DATA.value
        else:
            self._send_field = padded_type(MessageType.INPUT_STREAM_DATA)
            self._recv_type = MessageType.OUTPUT_STREAM_DATA.value
        self._control_types = _AGENT_CONTROL if agent else _CLIENT_CONTROL
        # sending
        self._next_seq = 0
        self._inflight: dict[int, _Pending] = {}
        self._order: deque[int] = deque()  # resend order; acked entries are skipped lazily
        self._priority: deque[tuple[int, bytes]] = deque()  # handshake messages
        self._backlog: deque[tuple[int, bytes]] = deque()  # data not yet sent
        self._next_check = now
        self._handshake_started: float | None = None
        if pace is not None and (pace <= 0 or pace_burst < 1):
            raise ValueError("pace must be positive and pace_burst at least 1")
        self._pace = pace
        self._burst = float(pace_burst)
        self._tokens = float(pace_burst)
        self._tokens_at = now
        # receiving
        self._expected = 0
        self._incoming: dict[int, tuple[int, bytes]] = {}
        self._out: list[bytes] = []
        self._ids = _fresh_ids()
        self._id_pos = 0

    # --- state -----------------------------------------------------------------------------

    @property
    def resend_buffer_size(self) -> int:
        """Stream-data messages not yet acknowledged, including those still waiting to go."""
        return len(self._inflight) + len(self._backlog) + len(self._priority)

    @property
    def send_window(self) -> int:
        """How many more messages (of up to 1024 bytes) fit before `can_send` turns false."""
        return max(0, self._capacity - len(self._inflight) - len(self._backlog))

    @property
    def can_send(self) -> bool:
        """False while the resend buffer is full: stop reading the sources of `send_data`."""
        return len(self._inflight) + len(self._backlog) < self._capacity

    @property
    def expected_sequence_number(self) -> int:
        return self._expected

    @property
    def next_sequence_number(self) -> int:
        return self._next_seq

    # --- feeding it ------------------------------------------------------------------------

    def receive(self, frame: bytes, now: float) -> list[Event]:
        """Process one binary websocket frame; raises `ProtocolError` for an invalid one.

        The Go peers log and drop invalid messages; the caller should do the same (a dropped
        stream-data message is retransmitted by its sender).
        """
        if type(frame) is not bytes:
            frame = bytes(frame)
        mtype, _schema, _created, seq, _flags, wire_id, ptype, payload = decode_raw(frame)
        if mtype == self._recv_type:
            return self._on_stream_data(seq, wire_id, ptype, payload, now)
        if mtype == "acknowledge":
            if self.paused:
                self._unpause(now)
            self._on_ack(payload, now)
            return []
        if mtype == "channel_closed":
            self.closed = True
            try:
                closed = parse_channel_closed(payload)
            except ProtocolError:  # the plugin stops even when it cannot read the reason
                return [ChannelClosed("", "")]
            return [ChannelClosed(closed.session_id, closed.output)]
        if mtype == "pause_publication":
            if self._agent:
                self.paused = True
            return [PublicationPaused()]
        if mtype == "start_publication":
            if self._agent and self.paused:
                self._unpause(now)
            return [PublicationStarted()]
        return []  # other types (e.g. the agent's agent_session_state) are not for us

    def send_data(self, data: bytes, now: float) -> None:
        """Queue Output payloads of at most 1024 bytes; never drops anything (see `can_send`).

        The CLIENT holds data back until the handshake has completed, and the AGENT while
        its handshake is in progress: a Go agent acknowledges and discards such data.
        """
        n = len(data)
        if n == 0:
            return  # the agent ignores empty payloads; nothing to carry
        if n <= MAX_PAYLOAD:
            chunks = [bytes(data)]
        else:
            view = memoryview(data)
            chunks = [bytes(view[i : i + MAX_PAYLOAD]) for i in range(0, n, MAX_PAYLOAD)]
        backlog = self._backlog
        if (
            backlog
            or self._priority
            or self.paused
            or not self._gate_open()
            or (self._pace is not None and self._refill(now) < len(chunks) - _PACE_EPSILON)
        ):
            backlog.extend([(_OUTPUT, c) for c in chunks])
            self._flush(now)
            return
        # fast path: straight onto the wire while the window allows
        inflight = self._inflight
        order = self._order
        out = self._out
        cap = self._capacity
        field = self._send_field
        created = self._ms(now)
        seq = self._next_seq
        agent = self._agent
        for i, chunk in enumerate(chunks):
            if len(inflight) >= cap:
                backlog.extend([(_OUTPUT, c) for c in chunks[i:]])
                break
            frame = encode_raw(
                field,
                created,
                seq,
                SYN if agent and seq == 0 else 0,
                self._new_id(),
                _OUTPUT,
                chunk,
            )
            out.append(frame)
            inflight[seq] = _Pending(frame, now)
            order.append(seq)
            seq += 1
        if self._pace is not None:
            self._tokens -= seq - self._next_seq
        self._next_seq = seq

    def send_flag(self, flag: Flag, now: float) -> None:
        """Queue a Flag message, in order after the data already queued."""
        self._backlog.append((_FLAG, flag_payload(flag)))
        self._flush(now)

    def start_handshake(self, now: float) -> None:
        """AGENT: send the HandshakeRequest (the first message, so seq 0 with SYN)."""
        if not self._agent:
            raise ValueError("only the agent starts a handshake")
        if self._handshake_started is not None:
            raise ValueError("handshake already started")
        self._handshake_started = now
        payload = handshake_request(self.agent_version or "", self.session_type, self.properties)
        self._priority.append((_HS_REQUEST, payload))
        self._flush(now)

    def set_ready(self, ready: bool) -> None:
        """AGENT: whether the TCP side can take data.

        While not ready, in-order data is neither acknowledged nor delivered, so the client
        retransmits it; out-of-order data is acknowledged and kept, as the agent does. The
        CLIENT role's readiness is `handshake_complete`; this flag does not affect it.
        """
        self.ready = bool(ready)

    def tick(self, now: float) -> list[Event]:
        """Run the resend check if it is due; returns `GaveUp` when the channel is lost."""
        if self.gave_up:
            return []
        if self._backlog and self._pace is not None:
            self._flush(now)  # paced messages whose tokens have accrued
        started = self._handshake_started
        if (
            started is not None
            and not self.handshake_complete
            and self.handshake_error is None
            and now - started >= HANDSHAKE_TIMEOUT
        ):
            self.gave_up = True
            self.handshake_error = "handshake timed out"
            return [GaveUp(f"no handshake response within {HANDSHAKE_TIMEOUT:g} s")]
        if now < self._next_check:
            return []
        self._next_check = now + RESEND_CHECK_INTERVAL
        if self.paused:
            return []
        order = self._order
        inflight = self._inflight
        while order and order[0] not in inflight:
            order.popleft()
        if not order:
            return []
        seq = order[0]
        pending = inflight[seq]
        if now - pending.sent < self.rto:
            return []
        if self._agent:
            pending.sent = now
            order.rotate(-1)
        elif pending.attempts >= MAX_RESEND_ATTEMPTS:
            self.gave_up = True
            return [GaveUp(f"message {seq} was resent {MAX_RESEND_ATTEMPTS} times without an ack")]
        pending.attempts += 1
        self._out.append(pending.frame)
        return []

    def next_deadline(self) -> float | None:
        """When `tick` next has work; None when it has none until something else happens."""
        if self.gave_up:
            return None
        deadline = None
        started = self._handshake_started
        if started is not None and not self.handshake_complete and self.handshake_error is None:
            deadline = started + HANDSHAKE_TIMEOUT
        if not self.paused:
            order = self._order
            inflight = self._inflight
            while order and order[0] not in inflight:
                order.popleft()
            if order:
                due = max(self._next_check, inflight[order[0]].sent + self.rto)
                deadline = due if deadline is None else min(deadline, due)
            if (
                self._pace is not None
                and self._backlog
                and self._gate_open()
                and len(inflight) < self._capacity
            ):
                due = self._tokens_at + max(0.0, 1.0 - self._tokens) / self._pace
                deadline = due if deadline is None else min(deadline, due)
        return deadline

    def resend_all(self, now: float) -> None:
        """Put every unacknowledged message on the wire again, oldest first (after a resume).

        Their resend timers restart now, so the resend check does not send them a third time
        before the new websocket had a chance to carry their acks.
        """
        inflight = self._inflight
        out = self._out
        for seq in sorted(inflight):
            pending = inflight[seq]
            pending.sent = now
            out.append(pending.frame)
        self._order = deque(sorted(inflight))
        self._next_check = now + RESEND_CHECK_INTERVAL

    # --- draining it -----------------------------------------------------------------------

    def frames_to_send(self) -> list[bytes]:
        """Binary websocket frames to write, in this order; each call hands them over once."""
        out = self._out
        if not out:
            return []
        self._out = []
        return out

    # --- receiving -------------------------------------------------------------------------

    def _on_stream_data(
        self, seq: int, wire_id: bytes, ptype: int, payload: bytes, now: float
    ) -> list[Event]:
        if self.paused:
            self._unpause(now)  # the agent resumes on any stream data
        expected = self._expected
        if seq == expected:
            verdict = self._verdict(ptype)
            if verdict == _HOLD:
                return []  # not acknowledged: the sender will retransmit
            self._ack(wire_id, seq, now)
            events: list[Event] = []
            data: list[bytes] = []
            if verdict == _DELIVER:
                self._process(ptype, payload, now, events, data)
            self._expected = expected + 1
            if self._incoming:
                self._drain(now, events, data)
            if data:
                events.append(DataReceived(data[0] if len(data) == 1 else b"".join(data)))
            return events
        if seq > expected:
            incoming = self._incoming
            if seq in incoming or len(incoming) < self._in_capacity:
                self._ack(wire_id, seq, now)
                incoming[seq] = (ptype, payload)
            return []
        if self._reack:
            self._ack(wire_id, seq, now)
        return []

    def _verdict(self, ptype: int) -> int:
        if ptype in self._control_types:
            return _DELIVER
        if self._agent:
            if self._handshake_started is not None and not self.handshake_complete:
                return _DISCARD  # the agent acks and ignores data during its handshake
            return _DELIVER if self.ready else _HOLD
        return _DELIVER if self.handshake_complete else _HOLD

    def _drain(self, now: float, events: list[Event], data: list[bytes]) -> None:
        incoming = self._incoming
        expected = self._expected
        while expected in incoming:
            ptype, payload = incoming[expected]
            verdict = self._verdict(ptype)
            if verdict == _HOLD:
                break  # already acknowledged; delivered when a later message arrives in order
            del incoming[expected]
            if verdict == _DELIVER:
                self._process(ptype, payload, now, events, data)
            expected += 1
        self._expected = expected

    def _process(
        self, ptype: int, payload: bytes, now: float, events: list[Event], data: list[bytes]
    ) -> None:
        if ptype == _OUTPUT:
            data.append(payload)
            return
        if data:  # keep events in stream order
            events.append(DataReceived(b"".join(data)))
            data.clear()
        if ptype == _FLAG:
            try:
                events.append(FlagReceived(parse_flag(payload)))
            except ProtocolError:
                pass  # Go reads an unknown or short flag as a value it ignores
        elif self._agent:
            if ptype == _HS_RESPONSE:
                self._on_handshake_response(payload, now, events)
        elif ptype == _HS_REQUEST:
            self._on_handshake_request(payload, now, events)
        elif ptype == _HS_COMPLETE:
            try:
                done = parse_handshake_complete(payload)
                ns, message = done.time_to_complete_ns, done.customer_message
            except ProtocolError:
                ns, message = 0, ""
            self.handshake_complete = True
            events.append(HandshakeCompleted(ns, message))
            self._flush(now)
        # other payload types (Error, Size, StdErr, ExitCode, ...) mean nothing to a port session

    def _on_handshake_request(self, payload: bytes, now: float, events: list[Event]) -> None:
        try:
            request = parse_handshake_request(payload)
        except ProtocolError:
            return  # the plugin gives up on the handshake; the agent times out after 15 s
        self.agent_version = request.agent_version
        actions, errors = self._process_actions(request)
        response = handshake_response_payload(self.client_version or "", actions, errors)
        self._priority.append((_HS_RESPONSE, response))
        events.append(
            HandshakeRequested(request.agent_version, request.session_type, request.properties)
        )
        self._flush(now)

    def _process_actions(self, request: HandshakeRequest) -> tuple[list[dict[str, Any]], list[str]]:
        """Answer each requested action as ``handleHandshakeRequest`` in streaming.go does."""
        actions: list[dict[str, Any]] = []
        errors: list[str] = []
        for action_type, params in request.actions:
            if action_type == SESSION_TYPE_ACTION:
                requested = params.get("SessionType") if isinstance(params, dict) else None
                if requested == self.session_type:
                    actions.append(processed_action(action_type, ActionStatus.SUCCESS))
                    continue
                err = f"Unsupported session type {requested}"
            elif action_type == KMS_ENCRYPTION_ACTION:
                err = "KMS encryption is not supported by this client"
            else:
                # Go puts Unsupported into ActionResult and leaves ActionStatus at 0.
                err = f"Unsupported action {action_type}"
                actions.append(processed_action(action_type, 0, ActionStatus.UNSUPPORTED, err))
                errors.append(err)
                continue
            actions.append(
                processed_action(
                    action_type,
                    ActionStatus.FAILED,
                    None,
                    f"Failed to process action {action_type}: {err}",
                )
            )
            errors.append(err)
        return actions, errors

    def _on_handshake_response(self, payload: bytes, now: float, events: list[Event]) -> None:
        try:
            response = parse_handshake_response(payload)
        except ProtocolError as exc:
            self.handshake_error = str(exc)
            return
        self.client_version = response.client_version
        events.append(HandshakeResponded(response.client_version, response.actions))
        failed = [a for a in response.actions if a.action_status != ActionStatus.SUCCESS]
        if failed:
            a = failed[0]
            self.handshake_error = (
                f"{a.action_type} failed on client with status {a.action_status} error: {a.error}"
            )
            return
        started = self._handshake_started
        if started is None or self.handshake_complete:
            return
        ns = round((now - started) * 1e9)
        self._priority.append((_HS_COMPLETE, handshake_complete(ns)))
        self.handshake_complete = True
        events.append(HandshakeCompleted(ns, ""))
        self._flush(now)

    # --- sending ---------------------------------------------------------------------------

    def _ms(self, now: float) -> int:
        ms = int((now + self._epoch_offset) * 1000)
        return ms if ms > 0 else 1  # CreatedDate 0 is invalid

    def _new_id(self) -> bytes:
        pos = self._id_pos
        if pos >= len(self._ids):
            self._ids = _fresh_ids()
            pos = 0
        self._id_pos = pos + 16
        return self._ids[pos : pos + 16]

    def _ack(self, wire_id: bytes, seq: int, now: float) -> None:
        payload = (ACK_TEMPLATE % (self._recv_type, wire_id_str(wire_id), seq)).encode()
        self._out.append(
            encode_raw(_ACK_FIELD, self._ms(now), 0, ACK_FLAGS, self._new_id(), 0, payload)
        )

    def _on_ack(self, payload: bytes, now: float) -> None:
        try:
            seq = ack_sequence_number(payload)
        except ProtocolError:
            return
        pending = self._inflight.pop(seq, None)
        if pending is None:
            return  # a repeated ack, or one for a message we never sent
        sample = now - pending.sent
        if sample < 0.0:
            sample = 0.0
        srtt = self._srtt
        self._rttvar = rttvar = (1.0 - RTTVAR_GAIN) * self._rttvar + RTTVAR_GAIN * abs(
            srtt - sample
        )
        self._srtt = srtt = (1.0 - RTT_GAIN) * srtt + RTT_GAIN * sample
        rto = srtt + max(CLOCK_GRANULARITY, 4.0 * rttvar)
        self.rto = rto if rto < MAX_RTO else MAX_RTO
        if self._backlog:
            self._flush(now)

    def _gate_open(self) -> bool:
        if self._agent:
            return self._handshake_started is None or self.handshake_complete
        return self.handshake_complete

    def _unpause(self, now: float) -> None:
        self.paused = False
        self._flush(now)

    def _transmit(self, ptype: int, payload: bytes, created: int, now: float) -> None:
        seq = self._next_seq
        flags = SYN if self._agent and seq == 0 else 0
        frame = encode_raw(self._send_field, created, seq, flags, self._new_id(), ptype, payload)
        self._out.append(frame)
        self._inflight[seq] = _Pending(frame, now)
        self._order.append(seq)
        self._next_seq = seq + 1

    def _flush(self, now: float) -> None:
        if self.paused:
            return  # the agent keeps messages while the service has paused publication
        created = self._ms(now)
        priority = self._priority
        while priority:
            ptype, payload = priority.popleft()
            self._transmit(ptype, payload, created, now)
        backlog = self._backlog
        if not backlog or not self._gate_open():
            return
        inflight = self._inflight
        cap = self._capacity
        if self._pace is None:
            while backlog and len(inflight) < cap:
                ptype, payload = backlog.popleft()
                self._transmit(ptype, payload, created, now)
            return
        tokens = self._refill(now)
        while backlog and len(inflight) < cap and tokens >= 1.0 - _PACE_EPSILON:
            ptype, payload = backlog.popleft()
            self._transmit(ptype, payload, created, now)
            tokens -= 1.0
        self._tokens = tokens

    def _refill(self, now: float) -> float:
        """Tokens of the pacing bucket at ``now`` (stored back)."""
        elapsed = now - self._tokens_at
        if elapsed > 0.0:
            assert self._pace is not None
            self._tokens = min(self._burst, self._tokens + elapsed * self._pace)
            self._tokens_at = now
        return self._tokens
