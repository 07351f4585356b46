"""smux protocol version 1 (xtaci/smux 1.5), sans-I/O: many TCP connections over one session.

The plugin (``portsession/muxportforwarding.go``) runs an smux client and the agent
(``plugins/port/port_mux.go``) an smux server over the byte stream that Output payloads carry.
That stream is cut into 1024-byte messages without regard to frame boundaries, so `receive`
accepts any cut. PSH payloads are passed on as soon as their bytes arrive instead of after the
whole frame (up to 32 KiB) has: the stream's bytes and their order are the same either way.

Frame header, little-endian: version (1 byte, 1), cmd (1 byte), length (u16), stream id (u32).
Version 1 has no window updates: UPD (v2) is a protocol error, as in current smux. Vendored
smux 1.5.x in both Go peers ignores the length of SYN/FIN/NOP and accepts UPD even in v1;
neither peer ever sends such frames, and current smux rejects them, so we do too.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from .messages import ProtocolError

VERSION = 1
CMD_SYN, CMD_FIN, CMD_PSH, CMD_NOP, CMD_UPD = 0, 1, 2, 3, 4
HEADER_SIZE = 8
MAX_FRAME_SIZE = 32768  # smux DefaultConfig().MaxFrameSize
KEEPALIVE_INTERVAL = 10.0  # smux DefaultConfig(): a NOP every 10 s ...
KEEPALIVE_TIMEOUT = 30.0  # ... and the session is closed after 30 s without any frame

# plugin src/config/config.go
TCP_MULTIPLEXING_SUPPORTED_AFTER = "3.0.196.0"
SMUX_KEEPALIVE_DISABLED_AFTER = "3.1.1511.0"
# agent plugins/port/port.go: smux keep-alive off for clients newer than this
AGENT_KEEPALIVE_DISABLED_AFTER_CLIENT = "1.2.331.0"

_HEADER = struct.Struct("<BBHI")
_MAX_STREAM_ID = 0xFFFFFFFF


class SmuxError(ProtocolError):
    """The peer broke the smux protocol; smux closes the whole session on this."""


@dataclass(frozen=True, slots=True)
class StreamOpened:
    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamData:
    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer sent FIN: it will send no more on this stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class Nop:
    pass


Event = StreamOpened | StreamData | StreamEnded | Nop


class _Stream:
    __slots__ = ("local_closed", "remote_closed")

    def __init__(self) -> None:
        self.local_closed = False
        self.remote_closed = False


class SmuxSession:
    """One end of an smux v1 session.

    Streams are half-closed: `close_stream` sends FIN and forbids further `send`, while the
    peer's data keeps arriving until its own FIN (`StreamEnded`). A stream is forgotten once
    both sides have sent FIN. As in smux, a SYN for a live stream, a FIN for an unknown one and
    data for an unknown or finished stream are ignored.
    """

    def __init__(self, *, client: bool) -> None:
        self.client = client
        # xtaci's nextStreamID: 1 for a client, 0 for a server; each OpenStream adds 2 first.
        self._next_id = 1 if client else 0
        self._streams: dict[int, _Stream] = {}
        self._out: list[bytes] = []
        self._buf = b""  # an incomplete header
        self._psh_sid = 0  # PSH frame whose payload is still arriving ...
        self._psh_left = 0  # ... and how many bytes of it are missing
        self.broken: SmuxError | None = None
        self._events: list[Event] = []  # being built by receive()
        self._chunks: list[bytes] = []  # data of one stream, not yet turned into an event
        self._chunk_sid = 0

    # --- sending ---------------------------------------------------------------------------

    def open_stream(self) -> int:
        """Queue a SYN for a new stream; client ids are 3, 5, 7, ... (server: 2, 4, ...)."""
        sid = self._next_id + 2
        if sid > _MAX_STREAM_ID:
            raise SmuxError("stream ids exhausted; start a new session")  # smux ErrGoAway
        self._next_id = sid
        self._streams[sid] = _Stream()
        self._out.append(_HEADER.pack(VERSION, CMD_SYN, 0, sid))
        return sid

    def send(self, stream_id: int, data: bytes) -> None:
        """Queue PSH frames of at most 32768 bytes."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise ValueError(f"stream {stream_id} is not open for sending")
        n = len(data)
        if n == 0:
            return
        out = self._out
        pack = _HEADER.pack
        if n <= MAX_FRAME_SIZE:
            out.append(pack(VERSION, CMD_PSH, n, stream_id))
            out.append(bytes(data))
            return
        view = memoryview(data)
        for i in range(0, n, MAX_FRAME_SIZE):
            chunk = view[i : i + MAX_FRAME_SIZE]
            out.append(pack(VERSION, CMD_PSH, len(chunk), stream_id))
            out.append(bytes(chunk))

    def close_stream(self, stream_id: int) -> None:
        """Queue a FIN (once); closing a closed or unknown stream does nothing."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return
        stream.local_closed = True
        self._out.append(_HEADER.pack(VERSION, CMD_FIN, 0, stream_id))
        if stream.remote_closed:
            del self._streams[stream_id]

    def nop(self) -> None:
        """Queue a keep-alive NOP (stream id 0, as smux sends it)."""
        self._out.append(_HEADER.pack(VERSION, CMD_NOP, 0, 0))

    def data_to_send(self) -> bytes:
        """The bytes queued since the last call, to carry in Output payloads."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def is_open(self, stream_id: int) -> bool:
        """Whether the stream is known and not yet closed by both sides."""
        return stream_id in self._streams

    @property
    def stream_ids(self) -> list[int]:
        return list(self._streams)

    # --- receiving -------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        """Consume any cut of the peer's byte stream; raises `SmuxError` on a protocol error.

        Consecutive data for one stream within a call comes as one `StreamData`.
        """
        if self.broken is not None:
            raise self.broken
        if self._buf:
            data = self._buf + bytes(data)
            self._buf = b""
        events: list[Event] = []
        self._events = events
        self._chunks = []
        pos = self._take_payload(data, 0) if self._psh_left else 0
        n = len(data)
        streams = self._streams
        unpack = _HEADER.unpack_from
        while pos < n:
            if n - pos < HEADER_SIZE:
                self._buf = bytes(data[pos:])
                break
            ver, cmd, length, sid = unpack(data, pos)
            pos += HEADER_SIZE
            if ver != VERSION:
                self._fail(f"frame version {ver}, expected {VERSION}")
            if cmd == CMD_PSH:
                if length:
                    self._psh_sid = sid
                    self._psh_left = length
                    pos = self._take_payload(data, pos)
                continue
            self._end_data()
            if cmd == CMD_SYN:
                if length:
                    self._fail(f"SYN for stream {sid} with length {length}")
                if sid not in streams:
                    streams[sid] = _Stream()
                    events.append(StreamOpened(sid))
            elif cmd == CMD_FIN:
                if length:
                    self._fail(f"FIN for stream {sid} with length {length}")
                stream = streams.get(sid)
                if stream is not None and not stream.remote_closed:
                    stream.remote_closed = True
                    events.append(StreamEnded(sid))
                    if stream.local_closed:
                        del streams[sid]
            elif cmd == CMD_NOP:
                if length:
                    self._fail(f"NOP with length {length}")
                events.append(Nop())
            elif cmd == CMD_UPD:
                self._fail("UPD (window update) is a version 2 command")
            else:
                self._fail(f"unknown command {cmd}")
        self._end_data()
        return events

    def _take_payload(self, data: bytes, pos: int) -> int:
        """Pass on what is present of the current PSH payload; returns the new position."""
        take = min(self._psh_left, len(data) - pos)
        if take <= 0:
            return pos
        self._psh_left -= take
        sid = self._psh_sid
        stream = self._streams.get(sid)
        if stream is not None and not stream.remote_closed:
            if self._chunks and self._chunk_sid != sid:
                self._end_data()
            self._chunk_sid = sid
            self._chunks.append(data[pos : pos + take])
        return pos + take

    def _end_data(self) -> None:
        chunks = self._chunks
        if chunks:
            data = bytes(chunks[0]) if len(chunks) == 1 else b"".join(chunks)
            self._events.append(StreamData(self._chunk_sid, data))
            chunks.clear()

    def _fail(self, reason: str) -> None:
        self.broken = SmuxError(f"smux protocol error: {reason}")
        raise self.broken


# --- version rules of the plugin (src/version/versionutil.go, versionvalidator.go) -----------

_ATOI = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = 2**63 - 1


def _atoi(part: str) -> int | None:
    """Go's ``strconv.Atoi``: optional sign and ASCII digits only, within int64."""
    if _ATOI.fullmatch(part) is None:
        return None
    value = int(part)
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


def _greater_than(version: str, reference: str) -> bool:
    """``isAgentVersionGreaterThanSupportedVersion``: false on any parse error.

    Parts are split on "." and must be as many as the reference's; they are parsed pairwise
    and the first difference decides, so a malformed part after it goes unnoticed (Go's
    ``compare`` returns before parsing it).
    """
    if not version:
        return False
    mine, theirs = version.split("."), reference.split(".")
    if len(mine) != len(theirs):
        return False
    for a, b in zip(mine, theirs, strict=True):
        x, y = _atoi(a), _atoi(b)
        if x is None or y is None:
            return False
        if x != y:
            return x > y
    return False


def use_smux(agent_version: str) -> bool:
    """Whether a port session to this agent is multiplexed (agent newer than 3.0.196.0)."""
    return _greater_than(agent_version, TCP_MULTIPLEXING_SUPPORTED_AFTER)


def needs_keepalive(agent_version: str, client_version: str | None = None) -> bool:
    """Whether the client must send a NOP every `KEEPALIVE_INTERVAL` seconds.

    The plugin keeps smux keep-alive on unless the agent is newer than 3.1.1511.0. Given
    ``client_version``, the agent's side is considered too: the agent leaves its own keep-alive
    on for clients at or below 1.2.331.0 and then closes the session after 30 s without a
    frame, so such a client must send NOPs whatever the agent's version.
    """
    if client_version is not None and not _agent_greater(
        client_version, AGENT_KEEPALIVE_DISABLED_AFTER_CLIENT
    ):
        return True
    return not _greater_than(agent_version, SMUX_KEEPALIVE_DISABLED_AFTER)


def _agent_greater(version: str, reference: str) -> bool:
    """The agent's ``versionutil.Compare(v, ref, true) > 0`` for dotted numeric versions.

    Components are compared numerically where both parse, else as text; with all shared
    components equal, the version with more components is greater.
    """
    mine, theirs = version.split("."), reference.split(".")
    for a, b in zip(mine, theirs, strict=False):
        x, y = _atoi(a), _atoi(b)
        if x is not None and y is not None:
            if x != y:
                return x > y
        elif a != b:
            return a > b
    return len(mine) > len(theirs)
