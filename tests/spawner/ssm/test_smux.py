"""Tests of `spawner.ssm.smux`: smux v1 framing, stream ids, reassembly, version rules.

Sources: xtaci/smux 1.5 ``frame.go`` (header layout, commands), ``session.go`` (nextStreamID,
recvLoop), ``stream.go`` (frame splitting, FIN on Close), ``mux.go`` (DefaultConfig); the
plugin's ``src/version/versionutil.go`` / ``versionvalidator.go`` / ``src/config/config.go``
and the agent's ``agent/session/plugins/port/port.go`` (keep-alive per client version).
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spawner.ssm import messages as m
from spawner.ssm.channel import ChannelConnection, DataReceived, Role
from spawner.ssm.smux import (
    Nop,
    SmuxError,
    SmuxSession,
    StreamData,
    StreamEnded,
    StreamOpened,
    needs_keepalive,
    use_smux,
)

# Frame headers by hand: version 1, cmd, length (u16 LE), stream id (u32 LE).
SYN_3 = bytes.fromhex("01 00 0000 03000000")
FIN_3 = bytes.fromhex("01 01 0000 03000000")
NOP_0 = bytes.fromhex("01 03 0000 00000000")


def psh(sid: int, data: bytes) -> bytes:
    return bytes([1, 2]) + len(data).to_bytes(2, "little") + sid.to_bytes(4, "little") + data


def test_golden_frames() -> None:
    """frame.go: 8-byte little-endian header; SYN=0, FIN=1, PSH=2, NOP=3."""
    client = SmuxSession(client=True)
    assert client.open_stream() == 3
    assert client.data_to_send() == SYN_3
    client.send(3, b"hi")
    assert client.data_to_send() == bytes.fromhex("01 02 0200 03000000") + b"hi"
    client.close_stream(3)
    assert client.data_to_send() == FIN_3
    client.nop()
    assert client.data_to_send() == NOP_0
    assert client.data_to_send() == b""


def test_client_stream_ids_are_odd_from_3_and_server_ids_even_from_2() -> None:
    """session.go: nextStreamID starts at 1 (client) or 0 (server); OpenStream adds 2 first."""
    client = SmuxSession(client=True)
    assert [client.open_stream() for _ in range(4)] == [3, 5, 7, 9]
    server = SmuxSession(client=False)
    assert [server.open_stream() for _ in range(2)] == [2, 4]


def test_stream_ids_exhausted() -> None:
    """OpenStream returns ErrGoAway when the id would overflow 32 bits."""
    client = SmuxSession(client=True)
    client._next_id = 0xFFFFFFFD
    assert client.open_stream() == 0xFFFFFFFF  # the last odd id that fits
    with pytest.raises(SmuxError, match="exhausted"):
        client.open_stream()


def test_frames_are_at_most_32768_bytes() -> None:
    """stream.go Write splits by MaxFrameSize (DefaultConfig: 32768)."""
    client = SmuxSession(client=True)
    sid = client.open_stream()
    client.data_to_send()
    data = bytes(range(256)) * 300  # 76800 bytes
    client.send(sid, data)
    out = client.data_to_send()
    expected = psh(3, data[:32768]) + psh(3, data[32768:65536]) + psh(3, data[65536:])
    assert out == expected
    assert out[2:4] == (32768).to_bytes(2, "little") == bytes.fromhex("0080")


def test_server_reassembles_frames_cut_anywhere() -> None:
    """recvLoop reads header then payload with io.ReadFull: any cut of the stream works."""
    stream = SYN_3 + psh(3, b"hello world") + NOP_0 + FIN_3
    for cut in range(1, len(stream) + 1):
        server = SmuxSession(client=False)
        events = []
        for i in range(0, len(stream), cut):
            events += server.receive(stream[i : i + cut])
        data = b"".join(e.data for e in events if isinstance(e, StreamData))
        assert data == b"hello world"
        assert [type(e) for e in events if not isinstance(e, StreamData)] == [
            StreamOpened,
            Nop,
            StreamEnded,
        ]


def test_smux_frames_split_across_1024_byte_messages() -> None:
    """The plugin copies the smux byte stream into Output payloads of <= 1024 bytes without
    regard to frame boundaries; the agent's smux server reassembles them."""
    client = SmuxSession(client=True)
    sid = client.open_stream()
    body = bytes(i % 251 for i in range(3000))
    client.send(sid, body)
    stream = client.data_to_send()
    assert stream == SYN_3 + bytes.fromhex("01 02 b80b 03000000") + body  # 3000 = 0x0bb8
    # through a CLIENT channel connection (handshake done) into an AGENT one
    chan = ChannelConnection(Role.CLIENT, now=1.0)
    chan.receive(_agent_msg(0, 5, m.handshake_request("3.3.0.0", "Port", {})), 1.0)
    chan.receive(_agent_msg(1, 7, m.handshake_complete(1)), 1.0)
    chan.frames_to_send()
    chan.send_data(stream, 1.0)
    payloads = [m.decode(f).payload for f in chan.frames_to_send()]
    assert payloads == [stream[0:1024], stream[1024:2048], stream[2048:3016]]
    assert payloads[0][:16] == SYN_3 + bytes.fromhex("01 02 b80b 03000000")
    agent = ChannelConnection(Role.AGENT, now=1.0)
    agent.set_ready(True)
    server = SmuxSession(client=False)
    events = []
    for seq, payload in enumerate(payloads):
        msg = m.ClientMessage("input_stream_data", seq, 0, uuid.uuid4(), 1, payload, 1)
        for e in agent.receive(m.encode(msg), 1.0):
            assert isinstance(e, DataReceived)
            events += server.receive(e.data)
    assert events[0] == StreamOpened(3)
    assert b"".join(e.data for e in events[1:]) == body


def _agent_msg(seq: int, ptype: int, payload: bytes) -> bytes:
    return m.encode(m.ClientMessage("output_stream_data", seq, 0, uuid.uuid4(), ptype, payload, 1))


def test_unknown_and_repeated_frames_are_ignored_as_smux_does() -> None:
    """recvLoop: SYN for a live stream, FIN for an unknown one, PSH for an unknown stream
    (its payload is still consumed) are all ignored."""
    server = SmuxSession(client=False)
    fin_7 = FIN_3[:4] + (7).to_bytes(4, "little")
    events = server.receive(SYN_3 + SYN_3 + psh(9, b"lost") + fin_7)
    assert events == [StreamOpened(3)]
    assert server.receive(psh(3, b"ok")) == [StreamData(3, b"ok")]


def test_half_close() -> None:
    """FIN ends one direction: after our FIN the peer's data still arrives until its FIN."""
    client = SmuxSession(client=True)
    server = SmuxSession(client=False)
    sid = client.open_stream()
    server.receive(client.data_to_send())
    client.close_stream(sid)
    client.close_stream(sid)  # idempotent: one FIN
    assert server.receive(client.data_to_send()) == [StreamEnded(sid)]
    with pytest.raises(ValueError, match="not open"):
        client.send(sid, b"late")
    server.send(sid, b"reply")
    server.close_stream(sid)
    assert client.receive(server.data_to_send()) == [StreamData(sid, b"reply"), StreamEnded(sid)]
    assert not client.is_open(sid) and not server.is_open(sid)
    assert client.receive(FIN_3) == []  # a second FIN: unknown stream now


def test_data_after_fin_is_ignored() -> None:
    server = SmuxSession(client=False)
    assert server.receive(SYN_3 + FIN_3 + psh(3, b"x")) == [StreamOpened(3), StreamEnded(3)]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (bytes.fromhex("02 00 0000 03000000"), "version 2"),
        (bytes.fromhex("01 04 0800 03000000") + bytes(8), "UPD"),
        (bytes.fromhex("01 05 0000 03000000"), "unknown command 5"),
        (bytes.fromhex("01 00 0100 03000000") + b"x", "SYN for stream 3 with length 1"),
        (bytes.fromhex("01 01 0100 03000000") + b"x", "FIN for stream 3 with length 1"),
        (bytes.fromhex("01 03 0100 00000000") + b"x", "NOP with length 1"),
    ],
)
def test_protocol_errors(raw: bytes, message: str) -> None:
    """recvLoop: a wrong version or unknown command is ErrInvalidProtocol; current smux also
    rejects UPD in v1 and lengths on SYN/FIN/NOP. The session stays broken."""
    server = SmuxSession(client=False)
    with pytest.raises(SmuxError, match=message):
        server.receive(raw)
    with pytest.raises(SmuxError):
        server.receive(NOP_0)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("3.0.196.0", False),  # equal is not greater
        ("3.0.196.1", True),
        ("3.0.197.0", True),
        ("3.0.195.99", False),
        ("3.1.0.0", True),
        ("10.0.0.0", True),  # numeric, not text, comparison
        ("2.3.1000.0", False),
        ("3.0.196", False),  # length mismatch is an error: false
        ("3.0.196.0.1", False),
        ("", False),
        ("3.0.x.0", False),  # Atoi fails before a difference is found
        ("3.1.x.y", True),  # Go returns at the first difference, before parsing "x"
        ("+3.0.197.0", True),  # strconv.Atoi accepts a sign
        (" 3.0.197.0", False),  # ... but no spaces
    ],
)
def test_use_smux(version: str, expected: bool) -> None:
    """DoesAgentSupportTCPMultiplexing: agent version greater than 3.0.196.0."""
    assert use_smux(version) is expected


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        ("3.1.1511.0", True),
        ("3.1.1512.0", False),
        ("3.2.0.0", False),
        ("3.0.222.0", True),
        ("garbage", True),  # the compare fails, so keep-alive stays on
    ],
)
def test_needs_keepalive_by_agent_version(agent: str, expected: bool) -> None:
    """muxportforwarding.go: KeepAliveDisabled when DoesAgentSupportDisableSmuxKeepAlive."""
    assert needs_keepalive(agent) is expected


@pytest.mark.parametrize(
    ("client", "expected"),
    [("1.2.0.0", True), ("1.2.331.0", True), ("1.2.331.1", False), ("1.2.650.0", False)],
)
def test_needs_keepalive_for_the_agents_sake(client: str, expected: bool) -> None:
    """port_mux.go: the agent disables its keep-alive only for clients newer than 1.2.331.0
    and otherwise closes a session idle for 30 s, whatever the agent's own version."""
    assert needs_keepalive("3.3.0.0", client) is expected


# --- property: any cuts, many streams -----------------------------------------------------

op = st.one_of(
    st.tuples(st.just("open")),
    st.tuples(st.just("send"), st.integers(0, 7), st.binary(max_size=40000)),
    st.tuples(st.just("close"), st.integers(0, 7)),
    st.tuples(st.just("nop")),
)


def feed(session: SmuxSession, stream: bytes, cuts: list[int]) -> list:
    events, pos, i = [], 0, 0
    while pos < len(stream):
        size = cuts[i % len(cuts)] if cuts else len(stream)
        events += session.receive(stream[pos : pos + size])
        pos += size
        i += 1
    return events


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(op, max_size=25),
    cuts_up=st.lists(st.integers(1, 3000), max_size=8),
    cuts_down=st.lists(st.integers(1, 3000), max_size=8),
)
def test_any_cuts_deliver_every_stream_in_order(ops, cuts_up, cuts_down) -> None:
    """Client opens, writes, closes, pings; the server echoes and closes what the client
    closed. Every stream's bytes arrive in order both ways; SYN and FIN arrive once each."""
    client, server = SmuxSession(client=True), SmuxSession(client=False)
    opened: list[int] = []
    sent: dict[int, bytearray] = {}
    closed: list[int] = []
    for o in ops:
        if o[0] == "open":
            sid = client.open_stream()
            opened.append(sid)
            sent[sid] = bytearray()
        elif o[0] == "send" and opened:
            sid = opened[o[1] % len(opened)]
            if sid not in closed:
                client.send(sid, o[2])
                sent[sid] += o[2]
        elif o[0] == "close" and opened:
            sid = opened[o[1] % len(opened)]
            client.close_stream(sid)
            if sid not in closed:
                closed.append(sid)
        elif o[0] == "nop":
            client.nop()
    events = feed(server, client.data_to_send(), cuts_up)
    got: dict[int, bytearray] = {}
    for e in events:
        if isinstance(e, StreamOpened):
            assert e.stream_id not in got
            got[e.stream_id] = bytearray()
        elif isinstance(e, StreamData):
            got[e.stream_id] += e.data
            server.send(e.stream_id, e.data)  # echo
        elif isinstance(e, StreamEnded):
            server.close_stream(e.stream_id)
    assert list(got) == opened
    assert {sid: bytes(b) for sid, b in got.items()} == {s: bytes(b) for s, b in sent.items()}
    ended = [e.stream_id for e in events if isinstance(e, StreamEnded)]
    assert ended == closed
    assert sum(isinstance(e, Nop) for e in events) == sum(o[0] == "nop" for o in ops)

    back = feed(client, server.data_to_send(), cuts_down)
    echoed: dict[int, bytearray] = {sid: bytearray() for sid in opened}
    for e in back:
        assert not isinstance(e, StreamOpened)
        if isinstance(e, StreamData):
            echoed[e.stream_id] += e.data
    assert {s: bytes(b) for s, b in echoed.items()} == {s: bytes(b) for s, b in sent.items()}
    assert [e.stream_id for e in back if isinstance(e, StreamEnded)] == closed
    for sid in closed:
        assert not client.is_open(sid) and not server.is_open(sid)
