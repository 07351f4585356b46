"""Tests of `spawner.ssm.channel.ChannelConnection` in both roles.

Sources of the behaviour checked: the plugin's ``src/datachannel/streaming.go`` and
``src/config/config.go`` (CLIENT role), the agent's ``agent/session/datachannel/datachannel.go``
and ``agent/session/config/config.go`` (AGENT role), ``agent/session/plugins/port/port.go``
(ErrHandlerNotReady while the TCP side is not ready), and docs/ssm-tunnel.md.
"""

from __future__ import annotations

import heapq
import itertools
import random
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spawner.ssm import channel as ch
from spawner.ssm import messages as m
from spawner.ssm.channel import ChannelConnection, Role
from spawner.ssm.messages import ClientMessage, Flag, PayloadType, ProtocolError

T0 = 1_700_000_000.0
PROPS = {"portNumber": "8888", "type": "LocalPortForwarding", "localPortNumber": "0"}


# --- helpers -------------------------------------------------------------------------------


def frame(
    mtype: str,
    seq: int,
    ptype: int,
    payload: bytes,
    *,
    flags: int = 0,
    msg_id: uuid.UUID | None = None,
) -> bytes:
    return m.encode(
        ClientMessage(mtype, seq, flags, msg_id or uuid.uuid4(), ptype, payload, 1_700_000_000_000)
    )


def out_msg(seq: int, ptype: int, payload: bytes, **kw) -> bytes:
    """A message the agent sends to the client."""
    return frame("output_stream_data", seq, ptype, payload, **kw)


def in_msg(seq: int, ptype: int, payload: bytes, **kw) -> bytes:
    """A message the client sends to the agent."""
    return frame("input_stream_data", seq, ptype, payload, **kw)


def ack_of(seq: int, mtype: str = "input_stream_data") -> bytes:
    return frame("acknowledge", 0, 0, m.ack_payload(mtype, str(uuid.uuid4()), seq), flags=3)


def decoded(conn: ChannelConnection) -> list[ClientMessage]:
    return [m.decode(f) for f in conn.frames_to_send()]


def acked_seqs(msgs: list[ClientMessage]) -> list[int]:
    return [m.parse_ack(x).sequence_number for x in msgs if x.message_type == "acknowledge"]


def data_of(events: list[ch.Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, ch.DataReceived))


def pump(a: ChannelConnection, b: ChannelConnection, now: float) -> list[ch.Event]:
    """Exchange frames losslessly until both are quiet; returns every event, in order."""
    events: list[ch.Event] = []
    moved = True
    while moved:
        moved = False
        for src, dst in ((a, b), (b, a)):
            for f in src.frames_to_send():
                moved = True
                events.extend(dst.receive(f, now))
    return events


def connected_pair(**client_kw) -> tuple[ChannelConnection, ChannelConnection]:
    client = ChannelConnection(Role.CLIENT, now=T0, **client_kw)
    agent = ChannelConnection(Role.AGENT, now=T0, agent_version="3.3.40.0", properties=PROPS)
    agent.set_ready(True)
    agent.start_handshake(T0)
    pump(client, agent, T0)
    assert client.handshake_complete and agent.handshake_complete
    return client, agent


def handshaken_client(**kw) -> ChannelConnection:
    """A CLIENT that has answered a request (its seq 0) and seen HandshakeComplete (seq 1)."""
    client = ChannelConnection(Role.CLIENT, now=T0, **kw)
    client.receive(out_msg(0, 5, m.handshake_request("3.3.0.0", "Port", PROPS), flags=1), T0)
    client.receive(out_msg(1, 7, m.handshake_complete(10)), T0)
    client.frames_to_send()
    client.receive(ack_of(0), T0)  # the response
    return client


def ready_agent(**kw) -> ChannelConnection:
    """An AGENT that skipped the handshake (like agents of plugins without one) and is ready."""
    agent = ChannelConnection(Role.AGENT, now=T0, **kw)
    agent.set_ready(True)
    return agent


# --- handshake -----------------------------------------------------------------------------


def test_client_handshake_acks_then_responds_then_completes() -> None:
    """streaming.go HandleOutputMessage: HandshakeRequest is acked, then the response is sent
    as input_stream_data seq 0 (Flags 0), PayloadType 6; HandshakeComplete is acked."""
    client = ChannelConnection(Role.CLIENT, now=T0)
    request = m.handshake_request("3.3.40.0", "Port", PROPS)
    events = client.receive(out_msg(0, 5, request, flags=1), T0)
    assert events == [ch.HandshakeRequested("3.3.40.0", "Port", PROPS)]
    assert client.agent_version == "3.3.40.0"
    ack, response = decoded(client)
    assert ack.message_type == "acknowledge"
    assert (ack.sequence_number, ack.flags, ack.payload_type) == (0, 3, 0)
    assert m.parse_ack(ack).sequence_number == 0
    assert m.parse_ack(ack).message_type == "output_stream_data"
    assert response.message_type == "input_stream_data"
    assert (response.sequence_number, response.flags) == (0, 0)
    assert response.payload_type == PayloadType.HANDSHAKE_RESPONSE
    assert response.payload == m.handshake_response("1.2.0.0", "Port")
    assert not client.handshake_complete

    events = client.receive(out_msg(1, 7, m.handshake_complete(123_000, "")), T0 + 0.1)
    assert events == [ch.HandshakeCompleted(123_000, "")]
    assert client.handshake_complete
    assert acked_seqs(decoded(client)) == [1]


def test_client_fails_actions_it_cannot_do() -> None:
    """handleHandshakeRequest: failed actions get status 2 and an Error, listed in Errors;
    unknown actions get ActionResult 3 with ActionStatus left at 0 (Go's quirk)."""
    client = ChannelConnection(Role.CLIENT, now=T0)
    request = json_bytes(
        {
            "AgentVersion": "3.3.0.0",
            "RequestedClientActions": [
                {"ActionType": "SessionType", "ActionParameters": {"SessionType": "Shell"}},
                {"ActionType": "KMSEncryption", "ActionParameters": {"KMSKeyId": "k"}},
                {"ActionType": "Teleport", "ActionParameters": None},
            ],
        }
    )
    client.receive(out_msg(0, 5, request), T0)
    response = m.parse_handshake_response(decoded(client)[1].payload)
    statuses = [(a.action_type, a.action_status, a.action_result) for a in response.actions]
    assert statuses == [("SessionType", 2, None), ("KMSEncryption", 2, None), ("Teleport", 0, 3)]
    assert response.actions[0].error == "Failed to process action SessionType: " + (
        "Unsupported session type Shell"
    )
    assert response.errors[2] == "Unsupported action Teleport"


def json_bytes(obj) -> bytes:
    return m.go_json(obj)


def test_agent_handshake_request_response_complete() -> None:
    """datachannel.go PerformHandshake: request as seq 0 with SYN, complete after the response
    with the elapsed time in nanoseconds; the response is acked first."""
    agent = ChannelConnection(Role.AGENT, now=T0, agent_version="3.3.40.0", properties=PROPS)
    agent.start_handshake(T0)
    (request,) = decoded(agent)
    assert request.message_type == "output_stream_data"
    assert (request.sequence_number, request.flags) == (0, m.SYN)
    assert request.payload_type == PayloadType.HANDSHAKE_REQUEST
    assert request.payload == m.handshake_request("3.3.40.0", "Port", PROPS)

    events = agent.receive(in_msg(0, 6, m.handshake_response("1.2.0.0", "Port")), T0 + 0.25)
    assert events[0] == ch.HandshakeResponded(
        "1.2.0.0", (m.ProcessedAction("SessionType", 1, None, ""),)
    )
    assert events[1] == ch.HandshakeCompleted(250_000_000, "")
    ack, complete = decoded(agent)
    assert acked_seqs([ack]) == [0]
    assert (complete.sequence_number, complete.flags) == (1, 0)
    assert complete.payload_type == PayloadType.HANDSHAKE_COMPLETE
    assert complete.payload == m.handshake_complete(250_000_000)
    assert agent.client_version == "1.2.0.0"
    assert agent.handshake_complete


def test_agent_does_not_complete_a_failed_handshake() -> None:
    """handleHandshakeResponse: an action that did not succeed fails the handshake."""
    agent = ChannelConnection(Role.AGENT, now=T0)
    agent.start_handshake(T0)
    agent.frames_to_send()
    bad = m.handshake_response_payload(
        "1.2.0.0", [m.processed_action("SessionType", 2, None, "nope")], ["nope"]
    )
    events = agent.receive(in_msg(0, 6, bad), T0)
    assert [type(e) for e in events] == [ch.HandshakeResponded]
    assert not agent.handshake_complete
    assert "SessionType failed on client with status 2 error: nope" == agent.handshake_error
    assert acked_seqs(decoded(agent)) == [0]  # acked, but no HandshakeComplete


def test_agent_gives_up_on_an_unanswered_handshake_after_15_s() -> None:
    """datachannel.go handshakeTimeout = 15 s."""
    agent = ChannelConnection(Role.AGENT, now=T0)
    agent.start_handshake(T0)
    assert agent.next_deadline() == pytest.approx(T0 + 0.2)  # the request's resend first
    assert agent.tick(T0 + 14.9) == []
    events = agent.tick(T0 + 15.0)
    assert [type(e) for e in events] == [ch.GaveUp]
    assert agent.gave_up and agent.next_deadline() is None


def test_start_handshake_is_agent_only() -> None:
    with pytest.raises(ValueError, match="agent"):
        ChannelConnection(Role.CLIENT, now=T0).start_handshake(T0)


def test_client_holds_back_output_until_handshake_complete() -> None:
    """ProcessStreamMessagePayload returns not-ready before the port handler exists: the
    message is neither acked nor delivered, so the agent retransmits it."""
    client = ChannelConnection(Role.CLIENT, now=T0)
    client.receive(out_msg(0, 5, m.handshake_request("3.3.0.0", "Port", PROPS)), T0)
    client.frames_to_send()
    assert client.receive(out_msg(1, 1, b"early"), T0) == []
    assert client.frames_to_send() == []
    assert client.expected_sequence_number == 1
    client.receive(out_msg(1, 7, m.handshake_complete(1)), T0)
    client.frames_to_send()
    assert data_of(client.receive(out_msg(2, 1, b"now"), T0)) == b"now"


def test_client_data_waits_for_handshake_then_follows_the_response() -> None:
    """The CLIENT holds its own data until HandshakeComplete: a Go agent discards earlier data."""
    client = ChannelConnection(Role.CLIENT, now=T0)
    client.send_data(b"x" * 10, T0)
    assert client.frames_to_send() == []
    assert client.resend_buffer_size == 1
    client.receive(out_msg(0, 5, m.handshake_request("3.3.0.0", "Port", PROPS)), T0)
    msgs = decoded(client)
    assert [x.payload_type for x in msgs] == [0, PayloadType.HANDSHAKE_RESPONSE]
    client.receive(out_msg(1, 7, m.handshake_complete(1)), T0)
    msgs = decoded(client)
    data = [x for x in msgs if x.message_type == "input_stream_data"]
    assert [(x.sequence_number, x.payload) for x in data] == [(1, b"x" * 10)]


# --- sequencing, acks, duplicates ---------------------------------------------------------


def test_numbering_flags_and_payload_cutting() -> None:
    """Each direction counts from 0; only the agent's seq 0 has SYN; payloads <= 1024 bytes."""
    client, agent = connected_pair()
    client.send_data(bytes(2500), T0)
    msgs = decoded(client)
    assert [(x.sequence_number, x.flags, len(x.payload)) for x in msgs] == [
        (1, 0, 1024),
        (2, 0, 1024),
        (3, 0, 452),
    ]
    assert {x.payload_type for x in msgs} == {PayloadType.OUTPUT}
    agent.send_data(b"abc", T0)
    (msg,) = decoded(agent)
    assert (msg.message_type, msg.sequence_number, msg.flags) == ("output_stream_data", 2, 0)


def test_in_order_and_out_of_order_delivery() -> None:
    """seq > expected is buffered and acked; seq == expected delivers it and its successors."""
    client = handshaken_client()
    assert client.receive(out_msg(3, 1, b"C"), T0) == []
    assert client.receive(out_msg(4, 1, b"D"), T0) == []
    assert acked_seqs(decoded(client)) == [3, 4]
    events = client.receive(out_msg(2, 1, b"B"), T0)
    assert events == [ch.DataReceived(b"BCD")]
    assert acked_seqs(decoded(client)) == [2]
    assert client.expected_sequence_number == 5


def test_client_drops_duplicates_without_reacking() -> None:
    """streaming.go: seq < expected falls through without an ack."""
    client = handshaken_client()
    client.receive(out_msg(2, 1, b"B"), T0)
    client.frames_to_send()
    assert client.receive(out_msg(2, 1, b"B"), T0) == []
    assert client.frames_to_send() == []


def test_client_can_be_told_to_reack_duplicates() -> None:
    client = handshaken_client(reack_duplicates=True)
    client.receive(out_msg(2, 1, b"B"), T0)
    client.frames_to_send()
    assert client.receive(out_msg(2, 1, b"B"), T0) == []
    assert acked_seqs(decoded(client)) == [2]


def test_agent_reacks_duplicates() -> None:
    """datachannel.go handleStreamDataMessage: "Resending acknowledge for already processed"."""
    agent = ready_agent()
    msg_id = uuid.uuid4()
    assert data_of(agent.receive(in_msg(0, 1, b"A", msg_id=msg_id), T0)) == b"A"
    agent.frames_to_send()
    assert agent.receive(in_msg(0, 1, b"A", msg_id=msg_id), T0) == []
    (ack,) = decoded(agent)
    assert m.parse_ack(ack) == m.Ack("input_stream_data", str(msg_id), 0, True)


def test_agent_not_ready_neither_acks_nor_delivers() -> None:
    """port.go InputStreamMessageHandler returns ErrHandlerNotReady: no ack, no delivery;
    out-of-order data is still acked and kept, and delivered once in-order data gets in."""
    agent = ChannelConnection(Role.AGENT, now=T0)
    assert agent.receive(in_msg(0, 1, b"A"), T0) == []
    assert agent.frames_to_send() == []
    assert agent.receive(in_msg(1, 1, b"B"), T0) == []
    assert acked_seqs(decoded(agent)) == [1]
    agent.set_ready(True)
    assert data_of(agent.receive(in_msg(0, 1, b"A"), T0)) == b"AB"
    assert acked_seqs(decoded(agent)) == [0]


def test_agent_discards_data_during_its_handshake() -> None:
    """processStreamDataMessage: "Handshake still in progress, ignore" - acked, not delivered."""
    agent = ChannelConnection(Role.AGENT, now=T0)
    agent.set_ready(True)
    agent.start_handshake(T0)
    agent.frames_to_send()
    assert agent.receive(in_msg(0, 1, b"too early"), T0) == []
    assert acked_seqs(decoded(agent)) == [0]
    assert agent.expected_sequence_number == 1


def test_ack_removes_exactly_that_message() -> None:
    """ProcessAcknowledgedMessage removes the one message with that sequence number."""
    client = handshaken_client()
    client.send_data(bytes(3000), T0)
    client.frames_to_send()
    assert client.resend_buffer_size == 3
    client.receive(ack_of(2), T0 + 0.05)
    assert client.resend_buffer_size == 2
    client.receive(ack_of(2), T0 + 0.05)  # repeated ack: nothing
    client.receive(ack_of(99), T0 + 0.05)  # unknown: nothing
    assert client.resend_buffer_size == 2


def test_flags_travel_as_flag_payloads() -> None:
    client, agent = connected_pair()
    client.send_flag(Flag.TERMINATE_SESSION, T0)
    (msg,) = [m.decode(f) for f in client.frames_to_send()]
    assert (msg.payload_type, msg.payload) == (PayloadType.FLAG, b"\x00\x00\x00\x02")
    assert agent.receive(m.encode(msg), T0) == [ch.FlagReceived(Flag.TERMINATE_SESSION)]


def test_channel_closed_is_reported() -> None:
    client = handshaken_client()
    payload = m.channel_closed_payload("sess-1", "Session terminated")
    events = client.receive(frame("channel_closed", 0, 0, payload, flags=3), T0)
    assert events == [ch.ChannelClosed("sess-1", "Session terminated")]
    assert client.closed


def test_invalid_frames_raise_protocol_error() -> None:
    client = handshaken_client()
    with pytest.raises(ProtocolError):
        client.receive(b"\x00" * 50, T0)


def test_epoch_offset_sets_created_date() -> None:
    """CreatedDate carries epoch ms even when `now` is a monotonic clock."""
    agent = ChannelConnection(Role.AGENT, now=5.0, epoch_offset=T0 - 5.0)
    agent.set_ready(True)
    agent.send_data(b"x", 5.0)
    (msg,) = decoded(agent)
    assert msg.created_date == int(T0 * 1000)


# --- retransmission ------------------------------------------------------------------------


def test_rto_follows_rfc6298_from_the_go_initial_values() -> None:
    """CalculateRetransmissionTimeout (same in both peers): SRTT 100 ms, RTTVAR 0, RTO 200 ms
    initially; then RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|, SRTT = 7/8 SRTT + 1/8 R,
    RTO = SRTT + max(10 ms, 4 RTTVAR), capped at 1 s."""
    assert ChannelConnection(Role.CLIENT, now=T0).rto == 0.2
    agent = ready_agent()
    assert agent.rto == 0.2
    agent.send_data(b"a", T0)
    agent.receive(ack_of(0, "output_stream_data"), T0 + 0.05)
    rttvar = 0.25 * 0.05  # |0.1 - 0.05|
    srtt = 0.875 * 0.1 + 0.125 * 0.05
    assert agent.rto == pytest.approx(srtt + max(0.01, 4 * rttvar))
    assert agent.rto == pytest.approx(0.14375)
    agent.send_data(b"b", T0 + 1)
    agent.receive(ack_of(1, "output_stream_data"), T0 + 1 + 0.05)
    rttvar = 0.75 * rttvar + 0.25 * abs(srtt - 0.05)
    srtt = 0.875 * srtt + 0.125 * 0.05
    assert agent.rto == pytest.approx(srtt + max(0.01, 4 * rttvar))
    agent.send_data(b"c", T0 + 2)
    agent.receive(ack_of(2, "output_stream_data"), T0 + 2 + 30.0)
    assert agent.rto == 1.0  # MaxTransmissionTimeout


def test_client_measures_round_trips_from_the_first_transmission() -> None:
    """The plugin never updates LastSentTime, so a resent message's sample includes the wait."""
    client = handshaken_client()  # the response was acked instantly: sample 0
    assert client.rto == pytest.approx(0.0875 + 4 * 0.025)  # SRTT 0.0875, RTTVAR 0.025
    client.send_data(b"x", T0 + 1)
    client.tick(T0 + 1)
    client.tick(client.next_deadline())
    assert len(client.frames_to_send()) == 2  # sent and resent
    client.receive(ack_of(1), T0 + 1.5)
    rttvar = 0.75 * 0.025 + 0.25 * abs(0.0875 - 0.5)
    srtt = 0.875 * 0.0875 + 0.125 * 0.5
    assert client.rto == pytest.approx(srtt + 4 * rttvar)


def test_rto_floor_is_the_clock_granularity_term() -> None:
    """No 1 s minimum as in RFC 6298: instant acks drive the RTO towards SRTT + 10 ms."""
    client = handshaken_client()
    for i in range(200):
        client.send_data(b"x", T0 + i)
        client.receive(ack_of(i + 1), T0 + i)
    assert client.rto == pytest.approx(0.01, abs=1e-6)


def test_client_resends_the_oldest_message_every_check_once_overdue() -> None:
    """ResendStreamDataMessageScheduler: a check every 100 ms; the client never restamps the
    message (Go updates a copy), so once overdue it is resent at every check."""
    client = handshaken_client()
    rto = client.rto  # 0.1875
    t = T0 + 1
    client.send_data(b"first", t)
    client.send_data(b"second", t + 0.01)
    (first_bytes, _) = client.frames_to_send()
    assert client.tick(t) == [] and client.frames_to_send() == []  # a check, nothing overdue
    assert client.next_deadline() == pytest.approx(t + rto)
    client.tick(t + 0.05)  # before the next check
    assert client.frames_to_send() == []
    client.tick(t + rto)
    assert client.frames_to_send() == [first_bytes]  # identical bytes, same id and date
    client.tick(t + rto + 0.05)  # less than 100 ms since the last check
    assert client.frames_to_send() == []
    assert client.next_deadline() == pytest.approx(t + rto + 0.1)
    client.tick(t + rto + 0.1)
    assert client.frames_to_send() == [first_bytes]  # again, and only one message per check


def test_agent_restamps_and_rotates_resent_messages() -> None:
    """The agent stores the new LastSentTime; we also move the message to the back so a
    message whose ack is lost cannot hold up the others."""
    agent = ready_agent()
    agent.send_data(b"one", T0)
    agent.send_data(b"two", T0)
    one, two = agent.frames_to_send()
    agent.tick(T0 + 0.2)
    assert agent.frames_to_send() == [one]
    agent.tick(T0 + 0.3)
    assert agent.frames_to_send() == [two]
    agent.tick(T0 + 0.4)
    assert agent.frames_to_send() == [one]  # 200 ms after its own resend


def test_client_gives_up_after_3000_resends() -> None:
    """ResendMaxAttempt = 3000: the session is then terminated (IsStreamMessageResendTimeout)."""
    client = handshaken_client()
    client.send_data(b"lost", T0)
    client.frames_to_send()
    now = T0
    resends = 0
    events: list[ch.Event] = []
    while not events and now < T0 + 1000:
        now = client.next_deadline()
        events = client.tick(now)
        resends += len(client.frames_to_send())
    assert resends == 3000
    assert [type(e) for e in events] == [ch.GaveUp]
    assert client.gave_up
    assert now == pytest.approx(T0 + 0.2 + 2999 * 0.1 + 0.1)  # about 5 minutes
    assert client.next_deadline() is None
    assert client.tick(now + 10) == []


def test_agent_has_no_resend_limit() -> None:
    agent = ready_agent()
    agent.send_data(b"lost", T0)
    agent.frames_to_send()
    now = T0
    for _ in range(3100):
        now = agent.next_deadline()
        assert agent.tick(now) == []
    assert len(agent.frames_to_send()) == 3100
    assert not agent.gave_up


def test_next_deadline_is_none_when_nothing_is_outstanding() -> None:
    client, agent = connected_pair()
    assert client.next_deadline() is None
    assert agent.next_deadline() is None


# --- buffer limits and backpressure ---------------------------------------------------------


def test_buffer_full_is_signalled_and_excess_waits_unsent() -> None:
    """The plugin drops the oldest message when its 10,000-message buffer is full; we keep
    the excess unsent and report it through can_send / send_window."""
    client = handshaken_client(resend_buffer=3)
    assert (client.can_send, client.send_window) == (True, 3)
    client.send_data(bytes(1024 * 5), T0)
    msgs = decoded(client)
    assert [x.sequence_number for x in msgs] == [1, 2, 3]
    assert (client.can_send, client.send_window, client.resend_buffer_size) == (False, 0, 5)
    client.receive(ack_of(2), T0)
    assert [x.sequence_number for x in decoded(client)] == [4]
    client.receive(ack_of(1), T0)
    client.receive(ack_of(3), T0)
    assert [x.sequence_number for x in decoded(client)] == [5]
    assert (client.can_send, client.send_window) == (True, 1)


@pytest.mark.parametrize(("role", "capacity"), [(Role.CLIENT, 10_000), (Role.AGENT, 100_000)])
def test_default_buffer_capacities(role: Role, capacity: int) -> None:
    """OutgoingMessageBufferCapacity: 10,000 in the plugin, 100,000 in the agent."""
    conn = handshaken_client() if role is Role.CLIENT else ready_agent()
    conn.send_data(bytes(1024 * (capacity - 1)), T0)
    assert conn.can_send and conn.send_window == 1
    conn.send_data(b"x", T0)
    assert not conn.can_send and conn.send_window == 0
    assert len(conn.frames_to_send()) == capacity


# --- publication ---------------------------------------------------------------------------


def test_agent_pauses_and_resumes_publication() -> None:
    """datachannel.go: pause_publication stops sending and resending; start_publication, or
    any stream data or ack, resumes."""
    agent = ready_agent()
    events = agent.receive(frame("pause_publication", 0, 0, b""), T0)
    assert events == [ch.PublicationPaused()]
    agent.send_data(b"held", T0)
    assert agent.frames_to_send() == []
    assert agent.next_deadline() is None
    events = agent.receive(frame("start_publication", 0, 0, b""), T0 + 1)
    assert events == [ch.PublicationStarted()]
    (msg,) = decoded(agent)
    assert msg.payload == b"held"
    agent.receive(frame("pause_publication", 0, 0, b""), T0 + 2)
    agent.send_data(b"again", T0 + 2)
    assert agent.frames_to_send() == []
    agent.receive(in_msg(0, 1, b"x"), T0 + 3)  # stream data unpauses
    assert [x.payload for x in decoded(agent) if x.payload_type == 1] == [b"again"]


def test_client_only_reports_publication_messages() -> None:
    """streaming.go OutputMessageHandler returns nil for start/pause_publication."""
    client = handshaken_client()
    assert client.receive(frame("pause_publication", 0, 0, b""), T0) == [ch.PublicationPaused()]
    client.send_data(b"still flows", T0)
    assert [x.payload for x in decoded(client)] == [b"still flows"]
    assert client.receive(frame("start_publication", 0, 0, b""), T0) == [ch.PublicationStarted()]


# --- a lossy network ------------------------------------------------------------------------


class LossyNet:
    """Drops, duplicates and delays (hence reorders) frames, as chosen by ``rnd``."""

    def __init__(self, rnd: random.Random, drop: float, dup: float, delay: float) -> None:
        self.rnd, self.drop, self.dup, self.delay = rnd, drop, dup, delay
        self.queue: list[tuple[float, int, str, bytes]] = []
        self.count = itertools.count()
        self.client_acks_dropped = 0

    def send(self, frames: list[bytes], now: float, to: str) -> None:
        for f in frames:
            if self.rnd.random() < self.drop:
                if to == "agent" and f[4:15] == b"acknowledge":
                    self.client_acks_dropped += 1
                continue
            for _ in range(2 if self.rnd.random() < self.dup else 1):
                at = now + self.rnd.random() * self.delay
                heapq.heappush(self.queue, (at, next(self.count), to, f))


def simulate(
    rnd: random.Random,
    drop: float,
    dup: float,
    delay: float,
    up: list[bytes],
    down: list[bytes],
    *,
    reack: bool | None,
) -> tuple[ChannelConnection, ChannelConnection, bytes, bytes, LossyNet]:
    net = LossyNet(rnd, drop, dup, delay)
    now = T0
    client = ChannelConnection(Role.CLIENT, now=now, reack_duplicates=reack)
    agent = ChannelConnection(Role.AGENT, now=now, properties=PROPS)
    agent.set_ready(True)
    agent.start_handshake(now)
    writes = [(T0 + 0.05 * i, "up", d) for i, d in enumerate(up)]
    writes += [(T0 + 0.07 * i, "down", d) for i, d in enumerate(down)]
    writes.sort(key=lambda w: w[0])
    got = {"agent": bytearray(), "client": bytearray()}
    want_up, want_down = b"".join(up), b"".join(down)
    conns = {"agent": agent, "client": client}
    done_at = None
    for _ in range(200_000):
        while net.queue and net.queue[0][0] <= now:
            _, _, to, f = heapq.heappop(net.queue)
            for e in conns[to].receive(f, now):
                if isinstance(e, ch.DataReceived):
                    got[to] += e.data
        while writes and writes[0][0] <= now:
            _, direction, d = writes.pop(0)
            (client if direction == "up" else agent).send_data(d, now)
        for conn in (client, agent):
            assert conn.tick(now) == []
        net.send(client.frames_to_send(), now, "agent")
        net.send(agent.frames_to_send(), now, "client")
        delivered = got["agent"] == want_up and got["client"] == want_down
        if delivered and not writes and client.resend_buffer_size == 0 and not net.queue:
            if agent.resend_buffer_size == 0:
                break
            done_at = done_at or now
            if now - done_at > 30:  # only a lost client ack can leave the agent waiting
                break
        candidates = [net.queue[0][0]] if net.queue else []
        candidates += [d for d in (client.next_deadline(), agent.next_deadline()) if d]
        if writes:
            candidates.append(writes[0][0])
        if not candidates or now > T0 + 300:  # healthy runs end within ~20 s
            break
        now = max(now, min(candidates))
    return client, agent, bytes(got["agent"]), bytes(got["client"]), net


# Hypothesis picks the loss rates and a seed; the losses themselves are independent draws. (A
# hypothesis-controlled Random can drop every frame forever, which no protocol survives.)
network = dict(
    seed=st.integers(0, 2**32 - 1),
    drop=st.floats(0.0, 0.3),
    dup=st.floats(0.0, 0.3),
    delay=st.floats(0.0, 0.5),
    up=st.lists(st.binary(max_size=5000), max_size=6),
    down=st.lists(st.binary(max_size=5000), max_size=6),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**network)
def test_lossy_network_with_reacking_client_delivers_and_drains(
    seed, drop, dup, delay, up, down
) -> None:
    """Every byte arrives exactly once and in order both ways, and both resend buffers
    drain, under drops, duplicates and reordering (client re-acking duplicates)."""
    rnd = random.Random(seed)
    client, agent, got_up, got_down, _ = simulate(rnd, drop, dup, delay, up, down, reack=True)
    assert got_up == b"".join(up)
    assert got_down == b"".join(down)
    assert client.resend_buffer_size == 0
    assert agent.resend_buffer_size == 0
    assert client.handshake_complete and agent.handshake_complete


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**network)
def test_lossy_network_with_faithful_client(seed, drop, dup, delay, up, down) -> None:
    """Default roles (the client drops duplicates without re-acking): delivery is still
    exactly once and in order, and the client's buffer drains; the agent's drains unless an
    ack from the client was lost, which the official client never repairs."""
    rnd = random.Random(seed)
    client, agent, got_up, got_down, net = simulate(rnd, drop, dup, delay, up, down, reack=None)
    assert got_up == b"".join(up)
    assert got_down == b"".join(down)
    assert client.resend_buffer_size == 0
    assert agent.resend_buffer_size == 0 or net.client_acks_dropped > 0


# --- pacing and resuming -------------------------------------------------------------------


def test_pacing_sends_a_burst_then_one_message_per_interval() -> None:
    """muxportforwarding.go transferDataToServer sleeps 1 ms after each message of up to
    1024 bytes: with ``pace=1000`` a burst leaves at once, the rest as tokens accrue (driven
    by ``tick``/``next_deadline``), in order; acks and retransmissions are not paced."""
    client = handshaken_client(pace=1000.0, pace_burst=4)
    client.send_data(bytes(10 * 1024), T0)
    first = decoded(client)
    assert [msg.sequence_number for msg in first] == [1, 2, 3, 4]
    deadline = client.next_deadline()
    assert deadline is not None and deadline == pytest.approx(T0 + 0.001)
    client.tick(deadline)
    assert [msg.sequence_number for msg in decoded(client)] == [5]
    now = deadline + 0.0035  # 3.5 tokens more: three messages
    client.tick(now)
    assert [msg.sequence_number for msg in decoded(client)] == [6, 7, 8]
    client.receive(out_msg(2, 1, b"data from the agent"), now)  # its ack is not paced
    assert [msg.message_type for msg in decoded(client)] == ["acknowledge"]
    client.tick(now + 1.0)  # the last two, then the (unpaced) resend of the oldest
    assert [msg.sequence_number for msg in decoded(client)] == [9, 10, 1]
    assert client.resend_buffer_size == 10


def test_unpaced_channel_sends_everything_at_once() -> None:
    client = handshaken_client()
    client.send_data(bytes(10 * 1024), T0)
    assert len(decoded(client)) == 10


def test_resend_all_retransmits_every_unacknowledged_message_in_order() -> None:
    """After a resume the new websocket may lack anything sent on the old one: every message
    not yet acknowledged goes out again, oldest first, and the resend check then waits a full
    RTO before sending any of them a third time."""
    client = handshaken_client()
    client.send_data(bytes(5 * 1024), T0)
    client.frames_to_send()
    client.receive(ack_of(3), T0 + 0.01)
    client.resend_all(T0 + 5.0)
    assert [msg.sequence_number for msg in decoded(client)] == [1, 2, 4, 5]
    client.tick(T0 + 5.1)
    assert decoded(client) == []
    for seq in (1, 2, 4, 5):
        client.receive(ack_of(seq), T0 + 5.2)
    assert client.resend_buffer_size == 0
