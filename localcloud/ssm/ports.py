"""The agent's port plugin: TCP connections to the target port, in smux or basic mode.

What SSM Agent does (``agent/session/plugins/port``), restated:

* ``port.go``: data from the client is refused with ``ErrHandlerNotReady`` (so it is neither
  acknowledged nor delivered, and the client retransmits) until the port session is
  initialised; the session is multiplexed (``port_mux.go``) when the document's ``type`` is
  ``LocalPortForwarding`` and the client is 1.1.70 or newer, else basic (``port_basic.go``).
  Agents up to 3.0.196.0 predate multiplexing; the client decides by the agent's version, so
  the stand-in uses basic mode for such agent versions as well.
* mux: an xtaci/smux server reads the Output payloads as one byte stream. For clients up to
  1.2.331.0 its keep-alive is on: a NOP every 10 s, and the smux session (so the port
  session) is closed when no frame at all has arrived for 30 s. Every stream the
  client opens (SYN) makes the agent dial the target port; if the dial fails it sends Flag
  ``ConnectToPortError`` and closes that stream (FIN) while the others go on. Bytes are copied
  both ways; when either side ends (client FIN or target EOF) the agent closes the TCP
  connection and the stream: there is no half-close. What the smux server writes is read back
  1024 bytes at a time and sent as Output payloads, with no regard to frame boundaries.
* basic: the agent dials once when the session starts (a refused dial fails the session); data
  is raw bytes of that one connection. ``DisconnectToPort`` from the client closes it, and so
  does the target closing it; the next data from the client dials again. ``TerminateSession``
  ends the session in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol

from spawner.ssm import smux
from spawner.ssm.messages import Flag


class AgentSession(Protocol):
    """What a port plugin uses of its session (`localcloud.ssm.agent.AgentSession`): the
    plugin is the agent's part, and the agent makes the plugin, not the other way round."""

    session_id: str
    instance_id: str
    remote_port: int
    client_version: str | None
    loop: asyncio.AbstractEventLoop

    def resolve_target(self) -> tuple[str, int]: ...

    def set_ready(self) -> None: ...

    def output_ready(self) -> None: ...

    def target_blocked(self, blocked: bool) -> None: ...

    def send_flag(self, flag: Flag) -> None: ...

    def terminate_from_client(self) -> None: ...

    def fail(self, output: str) -> None: ...


log = logging.getLogger(__name__)

MUX_MIN_AGENT_VERSION = (3, 0, 196, 0)  # agents newer than this speak smux
MUX_MIN_CLIENT_VERSION = (1, 1, 70, 0)  # port.go muxSupportedClientVersion
# port.go: smux keep-alive stays on for clients up to this version ("or else it breaks
# Session Manager idle timeout" for newer ones); xtaci/smux DefaultConfig timings.
KEEPALIVE_MAX_CLIENT_VERSION = (1, 2, 331, 0)
KEEPALIVE_INTERVAL = 10.0
KEEPALIVE_TIMEOUT = 30.0


def version_tuple(version: str | None) -> tuple[int, ...]:
    """``"3.0.196.0"`` -> ``(3, 0, 196, 0)``; missing or odd parts count as 0."""
    parts = []
    for part in (version or "").strip().split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple([*parts, 0, 0, 0, 0][:4])


def use_mux(agent_version: str, client_version: str | None, port_type: str | None) -> bool:
    """Whether a session is multiplexed: agent, client and document must all allow it."""
    return (
        version_tuple(agent_version) > MUX_MIN_AGENT_VERSION
        and version_tuple(client_version) >= MUX_MIN_CLIENT_VERSION
        and port_type == "LocalPortForwarding"
    )


class TargetConnection(asyncio.Protocol):
    """One TCP connection from the agent to the target port.

    When the target does not read fast enough, ``on_blocked(True)`` asks the agent to stop
    reading the websocket, as the Go agent stops when its ``conn.Write`` blocks.
    """

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        on_closed: Callable[[], None],
        on_blocked: Callable[[bool], None],
    ) -> None:
        self._on_data = on_data
        self._on_closed = on_closed
        self._on_blocked = on_blocked
        self._blocked = False
        self.transport: asyncio.Transport | None = None
        #: what the agent wrote since the last flush: sent in one write per loop iteration
        #: (a batch of 1 KiB messages is one send, not one per smux frame)
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def eof_received(self) -> bool:
        return False  # the agent closes the whole connection at EOF: no half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._blocked:
            self.resume_writing()
        self._on_closed()

    def pause_writing(self) -> None:
        self._blocked = True
        self._on_blocked(True)

    def resume_writing(self) -> None:
        self._blocked = False
        self._on_blocked(False)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def close(self) -> None:
        """Close after what was written has been sent (Go's ``conn.Close`` on a socket)."""
        if self.transport is not None:
            self._flush()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


async def dial(agent: AgentSession, factory: Callable[[], TargetConnection]) -> TargetConnection:
    """Connect to the target port the session's resolver names; ``OSError`` if refused."""
    try:
        host, port = agent.resolve_target()
    except OSError:
        raise
    except Exception as exc:  # LookupError by contract; anything else is the resolver's bug
        if not isinstance(exc, LookupError | ValueError):
            log.exception("resolver of %s failed", agent.instance_id)
        raise ConnectionRefusedError(f"nothing listens for port {agent.remote_port}") from exc
    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_connection(factory, host, port)
    return protocol


class _Stream:
    """State of one smux stream: its TCP connection, or what waits for the dial to finish."""

    __slots__ = ("conn", "ended", "pending")

    def __init__(self) -> None:
        self.conn: TargetConnection | None = None
        self.pending: list[bytes] = []
        self.ended = False


class MuxPorts:
    """The multiplexed port session: an smux server whose streams are TCP connections."""

    def __init__(self, agent: AgentSession) -> None:
        self._smux_module = smux
        self.agent = agent
        self.smux = smux.SmuxSession(client=False)
        self.streams: dict[int, _Stream] = {}
        self._paused = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keepalive: asyncio.TimerHandle | None = None
        self._heard = False  # a frame arrived since the last keep-alive timeout check
        self._silent_for = 0.0

    # -- from the client ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        smux = self._smux_module
        try:
            events = self.smux.receive(data)
        except smux.SmuxError as exc:
            self.agent.fail(str(exc))  # smux closes the session; the port plugin ends
            return
        if events:
            self._heard = True
        for event in events:
            if isinstance(event, smux.StreamOpened):
                self._open(event.stream_id)
            elif isinstance(event, smux.StreamData):
                self._to_target(event.stream_id, event.data)
            elif isinstance(event, smux.StreamEnded):
                self._client_fin(event.stream_id)

    def flag_received(self, flag: Flag) -> None:
        if flag == Flag.TERMINATE_SESSION:
            self.agent.terminate_from_client()

    def _open(self, stream_id: int) -> None:
        if stream_id in self.streams:
            return  # smux ignores a SYN for a stream it already has
        stream = self.streams[stream_id] = _Stream()
        task = asyncio.ensure_future(self._dial(stream_id, stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dial(self, stream_id: int, stream: _Stream) -> None:
        try:
            conn = await dial(
                self.agent,
                lambda: TargetConnection(
                    lambda data: self._from_target(stream_id, data),
                    lambda: self._target_closed(stream_id),
                    self.agent.target_blocked,
                ),
            )
        except OSError as exc:
            log.debug(
                "session %s stream %d: dial failed: %s", self.agent.session_id, stream_id, exc
            )
            if self.streams.get(stream_id) is stream:
                del self.streams[stream_id]
                self.agent.send_flag(Flag.CONNECT_TO_PORT_ERROR)
                self.smux.close_stream(stream_id)
                self.agent.output_ready()
            return
        if self.streams.get(stream_id) is not stream:  # session or stream gone meanwhile
            conn.abort()
            return
        stream.conn = conn
        for chunk in stream.pending:
            conn.write(chunk)
        stream.pending.clear()
        if stream.ended:
            self._close_stream(stream_id)
        elif self._paused:
            conn.pause()

    def _to_target(self, stream_id: int, data: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended:
            return
        if stream.conn is None:
            stream.pending.append(data)
        else:
            stream.conn.write(data)

    def _client_fin(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.ended = True
        if stream.conn is not None:
            self._close_stream(stream_id)

    # -- from the targets --------------------------------------------------------------
    def _from_target(self, stream_id: int, data: bytes) -> None:
        if stream_id in self.streams:
            self.smux.send(stream_id, data)
            self.agent.output_ready()

    def _target_closed(self, stream_id: int) -> None:
        if self.streams.get(stream_id) is not None:
            self._close_stream(stream_id)

    def _close_stream(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if stream.conn is not None:
            stream.conn.close()
        self.smux.close_stream(stream_id)
        self.agent.output_ready()

    # -- for the agent -----------------------------------------------------------------
    def start(self) -> None:
        """The smux server is up as soon as the handshake is done."""
        self.agent.set_ready()
        if version_tuple(self.agent.client_version) <= KEEPALIVE_MAX_CLIENT_VERSION:
            self._keepalive = self.agent.loop.call_later(KEEPALIVE_INTERVAL, self._keep_alive)

    def _keep_alive(self) -> None:
        """xtaci/smux keepalive(): NOP every interval; close when nothing came for the timeout."""
        self._silent_for = 0.0 if self._heard else self._silent_for + KEEPALIVE_INTERVAL
        self._heard = False
        if self._silent_for >= KEEPALIVE_TIMEOUT:
            self.agent.fail("smux keep-alive: nothing received from the client for 30 s")
            return
        self.smux.nop()
        self.agent.output_ready()
        self._keepalive = self.agent.loop.call_later(KEEPALIVE_INTERVAL, self._keep_alive)

    def output(self) -> bytes:
        return self.smux.data_to_send()

    def pause(self) -> None:
        self._paused = True
        for stream in self.streams.values():
            if stream.conn is not None:
                stream.conn.pause()

    def resume(self) -> None:
        self._paused = False
        for stream in self.streams.values():
            if stream.conn is not None:
                stream.conn.resume()

    def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        for task in self._tasks:
            task.cancel()
        for stream in self.streams.values():
            if stream.conn is not None:
                stream.conn.abort()
        self.streams.clear()


class BasicPort:
    """The basic port session: one TCP connection at a time, raw bytes, redial on demand."""

    def __init__(self, agent: AgentSession) -> None:
        self.agent = agent
        self.conn: TargetConnection | None = None
        self._dialing: asyncio.Task[Any] | None = None
        self._pending: list[bytes] = []
        self._out: list[bytes] = []
        self._paused = False

    def start(self) -> None:
        """Dial at once; the session is ready (data acknowledged) only when that worked."""
        self._redial(first=True)

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.write(data)
            return
        self._pending.append(data)
        if self._dialing is None:
            self._redial(first=False)

    def flag_received(self, flag: Flag) -> None:
        if flag == Flag.DISCONNECT_TO_PORT:
            self._drop_connection()
        elif flag == Flag.TERMINATE_SESSION:
            self.agent.terminate_from_client()

    def _redial(self, *, first: bool) -> None:
        self._dialing = asyncio.ensure_future(self._dial(first))

    async def _dial(self, first: bool) -> None:
        conn: TargetConnection | None = None

        def on_closed() -> None:
            if self.conn is conn:
                self.conn = None  # the next data from the client dials again

        try:
            conn = await dial(
                self.agent,
                lambda: TargetConnection(self._from_target, on_closed, self.agent.target_blocked),
            )
        except OSError as exc:
            self._dialing = None
            self.agent.fail(f"Unable to connect to specified port: {exc}")
            return
        finally:
            self._dialing = None
        self.conn = conn
        if self._paused:
            conn.pause()
        for chunk in self._pending:
            conn.write(chunk)
        self._pending.clear()
        if first:
            self.agent.set_ready()

    def _from_target(self, data: bytes) -> None:
        self._out.append(data)
        self.agent.output_ready()

    def _drop_connection(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()

    def output(self) -> bytes:
        if not self._out:
            return b""
        out = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        return out

    def pause(self) -> None:
        self._paused = True
        if self.conn is not None:
            self.conn.pause()

    def resume(self) -> None:
        self._paused = False
        if self.conn is not None:
            self.conn.resume()

    def close(self) -> None:
        if self._dialing is not None:
            self._dialing.cancel()
        if self.conn is not None:
            self.conn.abort()
            self.conn = None
