"""A local TCP port that stays put while SSM sessions behind it come and go.

`Tunnel` listens on ``127.0.0.1:<port>`` and carries every accepted connection to the
instance's remote port through a `DataChannel`. JupyterHub's proxy route points at that local
port for the whole life of a user's server, so the port is chosen once and kept; what changes
underneath is the session: the service ends sessions on idle timeout and maximum duration, an
agent restart or a network error ends them too, and the supervisor then opens a new one with
exponential backoff and jitter.

Connections map onto the session as the official plugin maps them
(``sessionmanagerplugin/session/portsession/``): with a multiplexing agent every connection is
one smux stream (``muxportforwarding.go``); with an old agent one connection is served at a
time and the next waits until it closes (``basicportforwarding.go``). A connection whose
session ends under it is reset, not left hanging: bytes may have been lost and only the client
can retry. A connection that arrives while no session is up waits for the next one (bounded).

Local sockets are asyncio protocols (no task per connection) and an idle tunnel does nothing
but its keep-alives, so a hub can hold hundreds of them on one loop and one thread pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from . import smux as _smux
from .datachannel import (
    DEFAULT_CLIENT_VERSION,
    DEFAULT_DOCUMENT,
    DEFAULT_MAX_UNACKED,
    DEFAULT_PACE,
    DEFAULT_PING_INTERVAL,
    DEFAULT_RESUME_TIMEOUT,
    DataChannel,
    SessionError,
    WebSocketConnector,
    describe_error,
    keep_task,
    shared_executor,
)
from .messages import Flag
from .metrics import TunnelMetrics
from .signing import CredentialSource

log = logging.getLogger(__name__)

#: Error codes that retrying cannot fix: `Tunnel.start` reports them at once. After the first
#: session the supervisor retries everything (an instance that reboots is TargetNotConnected
#: for a minute).
FATAL_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "InvalidDocument",
        "InvalidDocumentAccess",
        "InvalidTarget",
        "TargetNotConnected",
        "ValidationException",
        "NoCredentialsError",
        "NoRegionError",
        "ProfileNotFound",
        "PartialCredentialsError",
    }
)

_LINGER_RESET = struct.pack("ii", 1, 0)

#: Sessions a tunnel spreads its connections over at most (see `Tunnel`; measured in
#: ``benchmarks/tunnel.py``: a JupyterLab first load over 6 connections and a 50 MB download).
DEFAULT_MAX_SESSIONS = 6
#: Bytes waiting for one slow local client before its session stops being read: bounds the
#: hub's memory per connection while keeping loopback writes efficient.
DEFAULT_LOCAL_WRITE_LIMIT = 1024 * 1024


def backoff_delay(
    attempt: int,
    *,
    initial: float,
    cap: float,
    factor: float = 2.0,
    jitter: float = 0.5,
    rng: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempt`` (0-based): exponential, capped, jittered.

    The jitter takes up to ``jitter`` of the delay away at random, so that the tunnels of a
    hub that all lost their sessions in the same network blip do not retry in lockstep.
    """
    base = min(cap, initial * factor**attempt)
    return base * (1.0 - jitter * rng())


def default_ssm_client(
    region: str | None = None, endpoint_url: str | None = None, profile: str | None = None
) -> Any:
    """A boto3 SSM client for a tunnel given none (``snh forward``; the hub passes the
    client of its `spawner.region.Region`, shared by every server's tunnel there).

    Blocking (it reads configuration files): call it in a thread.
    """
    session = boto3.session.Session(profile_name=profile, region_name=region)
    return session.client(
        "ssm",
        endpoint_url=endpoint_url,
        config=Config(
            connect_timeout=5,
            read_timeout=20,
            retries={"mode": "standard", "max_attempts": 3},
        ),
    )


def _reset(transport: asyncio.BaseTransport) -> None:
    """Close with RST, so the client sees a failure instead of a clean (truncated) end."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
    transport.abort()  # type: ignore[attr-defined]


class _Local(asyncio.Protocol):
    """One accepted local connection; the current session's handler drives it."""

    __slots__ = (
        "closed",
        "eof",
        "fin_sent",
        "got_data",
        "handler",
        "pending",
        "sid",
        "transport",
        "tunnel",
        "wait_timer",
        "write_paused",
    )

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.transport: asyncio.Transport | None = None
        self.handler: _MuxHandler | _BasicHandler | None = None
        self.sid = 0
        self.got_data = False
        self.eof = False
        self.fin_sent = False
        self.closed = False
        self.write_paused = False
        self.wait_timer: asyncio.TimerHandle | None = None
        self.pending: list[bytes] | None = None  # bytes for the client, written once per turn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        transport.set_write_buffer_limits(high=self.tunnel.settings.local_write_limit)
        self.tunnel._accept(self)

    def data_received(self, data: bytes) -> None:
        handler = self.handler
        if handler is not None:
            self.tunnel.metrics.bytes_to_remote += len(data)
            handler.local_data(self, data)

    def eof_received(self) -> bool:
        self.eof = True
        if self.handler is not None:
            self.handler.local_eof(self)
        else:
            self.tunnel._forget_waiting(self)
            self.close()
        return True  # keep the write side open until the remote side is done

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.wait_timer is not None:
            self.wait_timer.cancel()
            self.wait_timer = None
        if self.write_paused:
            self.write_paused = False
            if self.handler is not None:
                self.handler.local_write_resumed()
        self.tunnel._forget_waiting(self)
        if self.handler is not None:
            self.handler.local_lost(self)

    def pause_writing(self) -> None:
        """The client does not read as fast as its data arrives (asyncio's high-water mark)."""
        if not self.write_paused:
            self.write_paused = True
            if self.handler is not None:
                self.handler.local_write_paused()

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            if self.handler is not None:
                self.handler.local_write_resumed()

    def write(self, data: bytes) -> None:
        """Queue bytes for the client: one socket write per loop turn, not per 1 KiB message."""
        if self.closed or self.transport is None:
            return
        self.tunnel.metrics.bytes_from_remote += len(data)
        pending = self.pending
        if pending is None:
            self.pending = [data]
            self.tunnel._mark_dirty(self)
        else:
            pending.append(data)

    def flush(self) -> None:
        pending, self.pending = self.pending, None
        if pending and not self.closed and self.transport is not None:
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        """Clean close after pending writes (the remote side finished)."""
        if not self.closed and self.transport is not None:
            self.flush()
            self.closed = True  # nothing more is written; connection_lost follows the drain
            self.transport.close()

    def reset(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.pending = None
            self.tunnel.metrics.connections_reset += 1
            _reset(self.transport)

    def wait_expired(self) -> None:
        self.wait_timer = None
        self.tunnel._forget_waiting(self)
        wait = self.tunnel.settings.wait_timeout
        log.info("%s: no session within %gs, resetting", self.tunnel, wait)
        self.reset()


class _Handler:
    """What both modes share: the session's lane, and pausing it for a slow local reader.

    One local connection whose client stops reading must not stop the others. Its bytes wait
    in its own transport buffer (bounded by ``local_write_limit``); past that the session's
    websocket is no longer read — smux v1 has no per-stream flow control, so the only way to
    stop the agent sending is to stop reading the session — and the tunnel places new
    connections on its other sessions. Connections on other sessions are not affected at all.
    """

    def __init__(self, tunnel: Tunnel, dc: DataChannel, lane: _Lane) -> None:
        self.tunnel = tunnel
        self.dc = dc
        self.lane = lane
        self.paused = not dc.writable
        self.write_paused = 0  # local connections of this session whose client reads slowly

    @property
    def load(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def local_write_paused(self) -> None:
        self.write_paused += 1
        if self.write_paused == 1:
            self.dc.pause_reading()

    def local_write_resumed(self) -> None:
        self.write_paused -= 1
        if self.write_paused == 0:
            self.dc.resume_reading()
            self.tunnel._place_waiting()  # the session may take waiting connections again


class _MuxHandler(_Handler):
    """smux mode: one stream per local connection, all sharing the session's byte stream.

    With the smux keep-alive on (agents up to 3.1.1511.0) the client sends a NOP every 10 s
    and, as xtaci/smux's ``keepalive`` does with the plugin's default configuration, closes
    the session when nothing at all arrived for 30 s. Time spent resuming a lost websocket or
    with reading paused for a slow local reader does not count: nothing can arrive then.
    """

    def __init__(
        self, tunnel: Tunnel, dc: DataChannel, lane: _Lane, keepalive: float | None
    ) -> None:
        super().__init__(tunnel, dc, lane)
        self.smux = _smux.SmuxSession(client=True)
        self.streams: dict[int, _Local] = {}
        self.connect_errors = 0  # ConnectToPortError flags not yet matched with a FIN
        self.active = False  # sent something since the last keep-alive tick
        self.keepalive = keepalive
        self.keepalive_timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.last_heard = self.loop.time()
        if keepalive:
            self.keepalive_timer = self.loop.call_later(keepalive, self._keepalive)

    @property
    def load(self) -> int:
        return len(self.streams)

    def _push(self) -> None:
        data = self.smux.data_to_send()
        if data:
            self.active = True
            self.dc.write(data)

    def _keepalive(self) -> None:
        self.keepalive_timer = None
        now = self.loop.time()
        if self.dc.resuming or self.write_paused:
            self.last_heard = now
        elif now - self.last_heard >= _smux.KEEPALIVE_TIMEOUT:
            silent = now - self.last_heard
            reason = f"smux keep-alive timeout: nothing from the agent for {silent:.0f} s"
            log.warning("%s: %s", self.tunnel, reason)
            keep_task(asyncio.ensure_future(self.dc.close(reason)))
            return
        if not self.active:
            self.smux.nop()
            self._push()
        self.active = False
        assert self.keepalive is not None
        self.keepalive_timer = self.loop.call_later(self.keepalive, self._keepalive)

    # local side

    def attach(self, conn: _Local) -> None:
        conn.handler = self
        conn.sid = self.smux.open_stream()
        self.streams[conn.sid] = conn
        self.tunnel.metrics.streams_open += 1
        self.tunnel._load_changed(self.lane)
        self._push()
        assert conn.transport is not None
        if self.paused:
            conn.transport.pause_reading()
        else:
            conn.transport.resume_reading()
        if conn.eof:  # EOF arrived while waiting for the session
            self.local_eof(conn)

    def local_data(self, conn: _Local, data: bytes) -> None:
        if conn.sid in self.streams and not conn.fin_sent:
            self.smux.send(conn.sid, data)
            self._push()

    def local_eof(self, conn: _Local) -> None:
        if conn.sid in self.streams and not conn.fin_sent:
            conn.fin_sent = True
            self.smux.close_stream(conn.sid)
            self._push()

    def local_lost(self, conn: _Local) -> None:
        if self.streams.pop(conn.sid, None) is None:
            return
        self.tunnel.metrics.streams_open -= 1
        if not conn.fin_sent:
            conn.fin_sent = True
            self.smux.close_stream(conn.sid)
            self._push()
        self.tunnel._load_changed(self.lane)

    # ChannelListener

    def data_received(self, data: bytes) -> None:
        self.last_heard = self.loop.time()
        try:
            events = self.smux.receive(data)
        except _smux.SmuxError as exc:
            # smux closes the whole session on a protocol error; so do we.
            log.warning("%s: %s", self.tunnel, exc)
            keep_task(asyncio.ensure_future(self.dc.close(str(exc))))
            return
        for event in events:
            if isinstance(event, _smux.StreamData):
                conn = self.streams.get(event.stream_id)
                if conn is not None:
                    conn.got_data = True
                    conn.write(event.data)
            elif isinstance(event, _smux.StreamEnded):
                conn = self.streams.get(event.stream_id)
                if conn is None:
                    continue
                if self.connect_errors and not conn.got_data:
                    # The agent could not reach the remote port for this stream: it sent
                    # ConnectToPortError, then closed the stream. Only this one fails.
                    self.connect_errors -= 1
                    conn.reset()
                else:
                    # The plugin closes the local connection once the stream ends (io.Copy
                    # returns, conn.Close()); pending bytes are written first.
                    conn.close()
            elif isinstance(event, _smux.StreamOpened):
                log.debug("%s: agent opened stream %s; closing it", self.tunnel, event.stream_id)
                self.smux.close_stream(event.stream_id)
        self._push()

    def flag_received(self, flag: Flag) -> None:
        self.last_heard = self.loop.time()
        if flag == Flag.CONNECT_TO_PORT_ERROR:
            self.connect_errors += 1
            log.warning(
                "%s: agent could not connect to %s port %s",
                self.tunnel,
                self.tunnel.target,
                self.tunnel.remote_port,
            )
        else:
            log.debug("%s: flag %s from agent", self.tunnel, flag)

    def pause_writing(self) -> None:
        self.paused = True
        for conn in self.streams.values():
            if conn.transport is not None and not conn.closed:
                conn.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        for conn in self.streams.values():
            if conn.transport is not None and not conn.closed:
                conn.transport.resume_reading()

    def session_lost(self) -> list[_Local]:
        """Reset every connection: bytes in flight may be lost, only the client can retry."""
        if self.keepalive_timer is not None:
            self.keepalive_timer.cancel()
            self.keepalive_timer = None
        conns = list(self.streams.values())
        self.streams.clear()
        self.tunnel.metrics.streams_open -= len(conns)
        for conn in conns:
            conn.reset()
        return []


class _BasicHandler(_Handler):
    """Basic mode: raw bytes of one connection at a time, DisconnectToPort when it closes.

    The plugin accepts the next connection only after the current one ended, so the others
    wait (here: accepted but not read). The agent never says that the remote side closed: a
    connection ends when its local client closes it.
    """

    def __init__(self, tunnel: Tunnel, dc: DataChannel, lane: _Lane) -> None:
        super().__init__(tunnel, dc, lane)
        self.current: _Local | None = None
        self.queue: deque[_Local] = deque()

    @property
    def load(self) -> int:
        return (self.current is not None) + len(self.queue)

    def attach(self, conn: _Local) -> None:
        conn.handler = self
        assert conn.transport is not None
        if self.current is None:
            self._serve(conn)
        else:
            conn.transport.pause_reading()
            self.queue.append(conn)
        self.tunnel._load_changed(self.lane)

    def _serve(self, conn: _Local) -> None:
        self.current = conn
        self.tunnel.metrics.streams_open += 1
        assert conn.transport is not None
        if self.paused:
            conn.transport.pause_reading()
        else:
            conn.transport.resume_reading()
        if conn.eof:
            self.local_eof(conn)

    def _end(self, conn: _Local) -> None:
        if self.current is not conn:
            return
        self.current = None
        self.tunnel.metrics.streams_open -= 1
        self.dc.send_flag(Flag.DISCONNECT_TO_PORT)
        while self.queue:
            nxt = self.queue.popleft()
            if not nxt.closed:
                self._serve(nxt)
                break
        self.tunnel._load_changed(self.lane)

    def local_data(self, conn: _Local, data: bytes) -> None:
        if conn is self.current:
            self.dc.write(data)

    def local_eof(self, conn: _Local) -> None:
        # As the plugin: a read error on the local connection ends it (DisconnectToPort).
        self._end(conn)
        conn.close()

    def local_lost(self, conn: _Local) -> None:
        if conn is self.current:
            self._end(conn)
        else:
            try:
                self.queue.remove(conn)
            except ValueError:
                return
            self.tunnel._load_changed(self.lane)

    def data_received(self, data: bytes) -> None:
        if self.current is not None:
            self.current.write(data)
        else:
            log.debug("%s: %d bytes with no connection to take them", self.tunnel, len(data))

    def flag_received(self, flag: Flag) -> None:
        log.debug("%s: flag %s from agent", self.tunnel, flag)

    def pause_writing(self) -> None:
        self.paused = True
        if self.current is not None and self.current.transport is not None:
            self.current.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.current is not None and self.current.transport is not None:
            self.current.transport.resume_reading()

    def session_lost(self) -> list[_Local]:
        """Reset the connection in flight; hand back the waiting ones (nothing was sent)."""
        current, self.current = self.current, None
        if current is not None:
            self.tunnel.metrics.streams_open -= 1
            current.reset()
        waiting = [c for c in self.queue if not c.closed]
        self.queue.clear()
        for conn in waiting:
            conn.handler = None
        return waiting


class _Lane:
    """One session slot of a tunnel: lane 0 is kept up for the tunnel's life, the others are
    opened when connections need them and closed again when they have been idle a while."""

    __slots__ = ("dc", "handler", "idle_timer", "index", "opened_at", "retiring", "task")

    def __init__(self, index: int) -> None:
        self.index = index
        self.dc: DataChannel | None = None
        self.handler: _MuxHandler | _BasicHandler | None = None
        self.task: asyncio.Task[None] | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.opened_at = 0.0
        self.retiring = False  # being closed for idleness: takes no new connection

    def __repr__(self) -> str:
        return f"<lane {self.index} {self.dc.session_id if self.dc else None}>"

    @property
    def up(self) -> bool:
        return (
            self.handler is not None
            and self.dc is not None
            and not self.dc.closed
            and not self.retiring
        )

    @property
    def opening(self) -> bool:
        """Its session is being opened (or, for lane 0, reopened)."""
        return self.handler is None and not self.retiring

    @property
    def load(self) -> int:
        return self.handler.load if self.handler is not None else 0

    @property
    def stalled(self) -> bool:
        """A client of this session reads too slowly: its websocket is not being read."""
        return self.handler is not None and self.handler.write_paused > 0


@dataclass(frozen=True)
class TunnelSettings:
    """How a `Tunnel` behaves: timeouts, pacing, sessions, backoff. Frozen, so one object
    can serve every tunnel of a hub (``EC2Spawner`` makes one from its traits)."""

    #: The address the local port is bound to.
    local_host: str = "127.0.0.1"
    #: The Session document (port forwarding to the instance itself).
    document_name: str = DEFAULT_DOCUMENT
    #: What the data channel reports as its client version (the official plugin's).
    client_version: str = DEFAULT_CLIENT_VERSION
    #: Seconds to open the websocket, and to complete the handshake after it.
    connect_timeout: float = 10.0
    handshake_timeout: float = 20.0
    #: Websocket pings (None: none) and how long to wait for the pong (0: not at all).
    ping_interval: float | None = DEFAULT_PING_INTERVAL
    ping_timeout: float | None = 0.0
    #: smux keep-alive, where the agent's version has it (0: off).
    keepalive_interval: float = 10.0
    #: Messages in flight before the sender waits for acknowledgements.
    max_unacked: int = DEFAULT_MAX_UNACKED
    #: Stream messages a second per session (None: unpaced); AWS's rate is about 1,000.
    pace: float | None = DEFAULT_PACE
    #: Seconds to resume a lost websocket before the session is given up.
    resume_timeout: float = DEFAULT_RESUME_TIMEOUT
    #: Sessions the connections are spread over (see `Tunnel`), and how long an extra one
    #: may stay unused, and a connection wait for a new one.
    max_sessions: int = DEFAULT_MAX_SESSIONS
    extra_session_idle: float = 60.0
    #: Seconds the first session may carry no connection before it is let go (None: it is
    #: kept up for the tunnel's life). The next connection then opens a session and waits
    #: for it, as after a lazy start; a session that ends while it carries nothing is not
    #: reopened until a connection needs it.
    idle_release: float | None = None
    spread_wait: float = 3.0
    #: Bytes queued for a slow local reader before its session stops being read.
    local_write_limit: int = DEFAULT_LOCAL_WRITE_LIMIT
    #: Reconnection backoff: first delay, cap, growth, jitter; a session up this long
    #: resets it.
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    backoff_factor: float = 2.0
    backoff_jitter: float = 0.5
    stable_after: float = 30.0
    #: Seconds `Tunnel.start` waits for the first session (0: the first failure is
    #: reported), and a connection waits for a session.
    start_timeout: float = 60.0
    wait_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if self.idle_release is not None and self.idle_release <= 0:
            raise ValueError("idle_release must be positive (or None: never)")


class Tunnel:
    """``127.0.0.1:<local_port>`` → SSM sessions → ``<target>:<remote_port>``, supervised.

    ``await start()`` binds the port and returns once the first session is up (raising
    `SessionError` if it cannot be opened); from then on the supervisor keeps a session up
    until ``await stop()``. `metrics` counts what happened; `session_id` names the first
    session (``None`` while reconnecting).

    Several sessions. One session carries about 1,000 messages of at most 1 KiB a second on
    AWS: about 1 MB/s for everything a server sends. The tunnel therefore spreads its local
    connections over up to ``max_sessions`` sessions: a connection goes to an idle session if
    there is one; when every session carries a connection and fewer than ``max_sessions``
    are up, another session is opened and the connection waits for it (at most
    ``spread_wait`` seconds; then it shares the least loaded one). Sessions beyond the
    first close after ``extra_session_idle`` seconds without a connection. A session whose
    client reads slowly is avoided and does not count against the limit (see `_Handler`).

    Letting go. With ``idle_release`` the first session, too, is closed after that long
    without a connection, and a session that ends while it carries nothing (the service's
    idle timeout, the instance stopping) is not replaced until a connection needs one. A hub
    with thousands of idle servers then holds no sessions for them: no keep-alives, and no
    wave of reopened sessions when the service's idle timeout ends them all.
    ``max_sessions=1`` is the official client's shape, one session per port, except that a
    session stalled by a slow reader is still replaced for the other connections.

    The boto3 client comes from ``ssm_client``, else ``ssm_client_factory()``, else
    `default_ssm_client` (``region`` / ``endpoint_url`` / ``profile``); it is built and
    called in ``executor`` (default: a pool shared by all tunnels). The data channel is signed
    with that client's credentials unless ``credentials`` says otherwise.
    """

    def __init__(
        self,
        target: str,
        remote_port: int,
        settings: TunnelSettings | None = None,
        *,
        local_port: int = 0,
        region: str | None = None,
        endpoint_url: str | None = None,
        profile: str | None = None,
        ssm_client: Any = None,
        ssm_client_factory: Callable[[], Any] | None = None,
        executor: Executor | None = None,
        connector: WebSocketConnector | None = None,
        credentials: CredentialSource | None = None,
        metrics: TunnelMetrics | None = None,
        datachannel_factory: Callable[[], DataChannel] | None = None,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        """``settings``: how the tunnel behaves (`TunnelSettings`, the defaults of the
        official client where it has one); the keyword arguments: where it goes and what it
        uses (the AWS client or how to make one, the signer's credentials, test doubles)."""
        self.settings = settings = settings or TunnelSettings()
        self.target = target
        self.remote_port = remote_port
        self.local_port = local_port
        self.region = region
        self.endpoint_url = endpoint_url
        self.profile = profile
        self.metrics = metrics if metrics is not None else TunnelMetrics()
        self.session_id: str | None = None
        self.agent_version: str | None = None
        self.last_error: BaseException | None = None
        self._ssm_client = ssm_client
        self._ssm_client_factory = ssm_client_factory
        self._executor = executor
        self._connector = connector
        self._credentials = credentials
        self._datachannel_factory = datachannel_factory
        self._rng = rng
        self._sleep = sleep

        self._server: asyncio.Server | None = None
        self._first: asyncio.Future[None] | None = None
        self._lanes: list[_Lane] = []  # lane 0 first
        self._opening: set[DataChannel] = set()  # being opened, to terminate on stop
        self._waiting: dict[_Local, None] = {}  # insertion-ordered set
        self._session_waiters: list[asyncio.Future[str]] = []
        self._dirty: list[_Local] = []
        self._dirty_handle: asyncio.Handle | None = None
        self._ever_connected = False
        self._stopping = False
        self._demand: asyncio.Event | None = None  # lazy start: set by the first connection
        self._woken = False  # lane 0 rests: its next session is not a recovery
        self._grow_after = 0.0  # no extra session before this loop time (after a failure)
        self._spread_timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        here = f"{self.settings.local_host}:{self.local_port}"
        return f"<Tunnel {here} -> {self.target}:{self.remote_port}>"

    # -- public ---------------------------------------------------------------------------

    @property
    def _primary(self) -> _Lane | None:
        return self._lanes[0] if self._lanes else None

    @property
    def connected(self) -> bool:
        """The first session is up and carrying connections."""
        lane = self._primary
        return lane is not None and lane.up

    @property
    def mode(self) -> str | None:
        """``"smux"``, ``"basic"``, or ``None`` while no session is up."""
        lane = self._primary
        handler = lane.handler if lane is not None else None
        if isinstance(handler, _MuxHandler):
            return "smux"
        if isinstance(handler, _BasicHandler):
            return "basic"
        return None

    @property
    def sessions(self) -> list[str]:
        """Ids of the sessions up now, the first session's first."""
        return [lane.dc.session_id or "" for lane in self._lanes if lane.up and lane.dc is not None]

    @property
    def stalled_sessions(self) -> int:
        """Sessions not being read because one of their local clients reads too slowly."""
        return sum(lane.stalled for lane in self._lanes)

    @property
    def url(self) -> str:
        return f"http://{self.settings.local_host}:{self.local_port}"

    async def start(self, *, lazy: bool = False) -> None:
        """Bind the local port and open the first session.

        Errors that retrying cannot fix (access denied, target not connected, bad document,
        no credentials) raise `SessionError` at once; others are retried for
        ``start_timeout`` seconds. On failure the port is released again.

        ``lazy``: return once the port is bound; the first session opens when the first local
        connection arrives (which waits for it). A hub restarting with hundreds of servers
        keeps every proxy route valid without opening hundreds of sessions at once.
        """
        if self._server is not None:
            raise RuntimeError("tunnel already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            functools.partial(_Local, self), self.settings.local_host, self.local_port, backlog=256
        )
        self.local_port = self._server.sockets[0].getsockname()[1]
        self._first = loop.create_future()
        if lazy:
            self._demand = asyncio.Event()
            self._first.set_result(None)
        lane = _Lane(0)
        self._lanes.append(lane)
        lane.task = loop.create_task(self._supervise(lane))
        if lazy:
            log.info("%r listening; session opens on first use", self)
            return
        try:
            await asyncio.shield(self._first)
        except BaseException:
            await self.stop()
            raise
        log.info("%r up (session %s)", self, self.session_id)

    async def stop(self) -> None:
        """Close the port, reset open connections and terminate the sessions."""
        if self._stopping:
            return
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._spread_timer is not None:
            self._spread_timer.cancel()
            self._spread_timer = None
        lanes = list(self._lanes)
        tasks = [lane.task for lane in lanes if lane.task is not None and not lane.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._lanes.clear()
        self.session_id = None
        opening, self._opening = list(self._opening), set()
        channels: list[DataChannel] = []
        for lane in lanes:
            if lane.idle_timer is not None:
                lane.idle_timer.cancel()
            if lane.handler is not None:
                for conn in lane.handler.session_lost():
                    conn.reset()
                self.metrics.sessions_open -= 1
            if lane.dc is not None:
                channels.append(lane.dc)
            lane.handler = lane.dc = None
        for conn in list(self._waiting):
            conn.reset()
        self._waiting.clear()
        # cancelled mid-open: wait for their TerminateSession too
        await asyncio.gather(
            *(dc.close("tunnel stopped", terminate=True) for dc in opening + channels),
            return_exceptions=True,
        )
        for fut in self._session_waiters:
            if not fut.done():
                fut.set_exception(ConnectionError("tunnel stopped"))
        self._session_waiters.clear()
        if self._first is not None and not self._first.done():
            self._first.set_exception(ConnectionError("tunnel stopped"))
            self._first.exception()
        log.info("%r stopped", self)

    async def drop_session(self, reason: str = "dropped by request") -> None:
        """End the first session (TerminateSession) so that the supervisor opens another."""
        lane = self._primary
        if lane is not None and lane.dc is not None:
            await lane.dc.close(reason, terminate=True)

    async def wait_for_session(
        self, *, newer_than: str | None = None, timeout: float | None = None
    ) -> str:
        """Wait until a first session other than ``newer_than`` is up; returns its id."""
        if self.connected and self.session_id is not None and self.session_id != newer_than:
            return self.session_id
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._session_waiters.append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if fut in self._session_waiters:
                self._session_waiters.remove(fut)

    async def __aenter__(self) -> Tunnel:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- supervisor -------------------------------------------------------------------------

    def backoff_delay(self, attempt: int) -> float:
        return backoff_delay(
            attempt,
            initial=self.settings.backoff_initial,
            cap=self.settings.backoff_max,
            factor=self.settings.backoff_factor,
            jitter=self.settings.backoff_jitter,
            rng=self._rng,
        )

    async def _client(self) -> Any:
        if self._ssm_client is None:
            factory = self._ssm_client_factory or functools.partial(
                default_ssm_client, self.region, self.endpoint_url, self.profile
            )
            loop = asyncio.get_running_loop()
            try:
                self._ssm_client = await loop.run_in_executor(
                    self._executor or shared_executor(), factory
                )
            except Exception as exc:
                code, message = describe_error(exc)
                raise SessionError("creating the SSM client", message, code=code) from exc
        return self._ssm_client

    async def _new_datachannel(self) -> DataChannel:
        if self._datachannel_factory is not None:
            return self._datachannel_factory()
        settings = self.settings
        return DataChannel(
            await self._client(),
            self.target,
            self.remote_port,
            executor=self._executor,
            region=self.region,
            document_name=settings.document_name,
            client_version=settings.client_version,
            connector=self._connector,
            credentials=self._credentials,
            connect_timeout=settings.connect_timeout,
            handshake_timeout=settings.handshake_timeout,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            max_unacked=settings.max_unacked,
            pace=settings.pace,
            resume_timeout=settings.resume_timeout,
            metrics=self.metrics,
        )

    async def _open(self) -> DataChannel:
        """A new open session. One whose opening is cancelled (by `stop`) stays in
        ``_opening``, so that `stop` waits for its StartSession and terminates it; one that
        failed is terminated before the error goes on."""
        dc = await self._new_datachannel()
        self._opening.add(dc)
        try:
            await dc.open()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._opening.discard(dc)
            # A session that was started is being terminated: wait for it (bounded), so
            # that no failed attempt leaves a session behind when the error is reported.
            await dc.close(f"open failed: {exc}")
            raise
        self._opening.discard(dc)
        return dc

    def _failed(self, exc: Exception) -> None:
        self.metrics.session_failures += 1
        self.last_error = exc

    def _rest(self) -> bool:
        """Whether lane 0 may wait for a connection before its next session (and then arm
        that wait): only with ``idle_release``, while no connection waits and no other
        session carries one."""
        if self.settings.idle_release is None or self._waiting or not self._idle():
            return False
        self._demand = asyncio.Event()
        self._woken = True  # the next first session is opened on demand
        return True

    async def _supervise(self, lane: _Lane) -> None:
        """Keep lane 0's session up for the tunnel's life (new session, backoff), or, with
        ``idle_release``, whenever a connection needs it."""
        loop = asyncio.get_running_loop()
        assert self._first is not None
        if self._demand is not None:
            await self._demand.wait()
        start_deadline = loop.time() + self.settings.start_timeout
        attempt = 0
        while not self._stopping:
            if self._demand is not None and not self._demand.is_set():
                log.debug("%r: no session until a connection needs one", self)
                await self._demand.wait()
            try:
                dc = await self._open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
                code = getattr(exc, "code", None) or describe_error(exc)[0]
                if not self._first.done() and (
                    code in FATAL_CODES or loop.time() >= start_deadline
                ):
                    self._first.set_exception(exc)
                    return
                delay = self.backoff_delay(attempt)
                attempt += 1
                log.warning("%r: %s; retrying in %.1fs", self, exc, delay)
                await self._sleep(delay)
                # nobody waits any more (their wait timed out): stop trying until someone does,
                # and then try at once
                if self._first.done() and self._rest():
                    attempt = 0
                continue
            self._install(lane, dc)
            reason = await dc.wait_closed()
            released, idle = lane.retiring, self._idle()
            self._uninstall(lane, reason)
            if self._stopping:
                return
            if loop.time() - lane.opened_at >= self.settings.stable_after:
                attempt = 0
            if idle and self._rest():
                log.info("%r: session ended (%s); the next opens on first use", self, reason)
                attempt = 0
                continue
            if released:  # our own choice, and a connection came meanwhile: no backoff
                continue
            delay = self.backoff_delay(attempt)
            attempt += 1
            log.info("%r: session ended (%s); new session in %.1fs", self, reason, delay)
            await self._sleep(delay)

    async def _serve_extra(self, lane: _Lane) -> None:
        """One session for an extra lane: opened once, used until it ends, then forgotten."""
        loop = asyncio.get_running_loop()
        try:
            dc = await self._open()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
            # Spreading is an optimisation: back off from it, the first session carries on.
            self._grow_after = loop.time() + self.backoff_delay(2)
            log.info("%r: no extra session: %s", self, exc)
            self._drop_lane(lane)
            return
        if self._stopping or lane not in self._lanes:
            await dc.close("tunnel stopped", terminate=True)
            return
        try:
            self._install(lane, dc)
            reason = await dc.wait_closed()
            self._uninstall(lane, reason)
            if not lane.retiring and loop.time() - lane.opened_at < self.settings.stable_after:
                # it ended on its own, soon: do not replace it at once (an instance-side
                # limit, an agent closing sessions) — the first session carries on
                self._grow_after = loop.time() + self.backoff_delay(2)
        finally:
            self._drop_lane(lane)

    def _drop_lane(self, lane: _Lane) -> None:
        if lane.idle_timer is not None:
            lane.idle_timer.cancel()
            lane.idle_timer = None
        if lane in self._lanes and lane.index != 0:
            self._lanes.remove(lane)
        if not self._stopping:
            self._place_waiting()

    def _install(self, lane: _Lane, dc: DataChannel) -> None:
        agent_version = dc.agent_version or ""
        handler: _MuxHandler | _BasicHandler
        # As the plugin (portsession.go Initialize) and the agent (plugins/port/port.go):
        # multiplexing needs a new enough agent *and* a LocalPortForwarding document; any
        # other session is basic mode, whatever the agent's version.
        port_type = (dc.session_properties or {}).get("type")
        if _smux.use_smux(agent_version) and port_type == "LocalPortForwarding":
            keepalive = None
            if _smux.needs_keepalive(agent_version, self.settings.client_version):
                keepalive = self.settings.keepalive_interval or None
            handler = _MuxHandler(self, dc, lane, keepalive)
        else:
            handler = _BasicHandler(self, dc, lane)
        dc.set_listener(handler)
        lane.dc, lane.handler = dc, handler
        lane.retiring = False  # lane 0 after a release
        lane.opened_at = asyncio.get_running_loop().time()
        self.metrics.sessions_opened += 1
        self.metrics.sessions_open += 1
        if lane.index == 0:
            self.session_id, self.agent_version = dc.session_id, dc.agent_version
            if self._ever_connected and not self._woken:
                self.metrics.reconnects += 1  # a recovery; not a session opened on demand
            self._ever_connected = True
            self._woken = False
            assert self._first is not None
            if not self._first.done():
                self._first.set_result(None)
            waiters, self._session_waiters = self._session_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(dc.session_id or "")
        self._load_changed(lane)
        self._place_waiting()

    def _uninstall(self, lane: _Lane, reason: str) -> None:
        handler = lane.handler
        lane.handler = lane.dc = None
        if lane.idle_timer is not None:
            lane.idle_timer.cancel()
            lane.idle_timer = None
        if lane.index == 0:
            self.session_id = None
        self.metrics.last_end_reason = reason
        if handler is not None:
            self.metrics.sessions_open -= 1
            for conn in handler.session_lost():
                self._park(conn)
            self._place_waiting()

    # -- spreading connections over sessions ----------------------------------------------

    def _choose(self, *, force: bool = False) -> _Lane | None:
        """The session for a new connection, or None: wait for one that is being opened.

        An idle session that is not stalled is best. Without one, the connection waits while
        another session can be or is being opened (the caller opens it), unless ``force``
        (the wait is over); then it shares the least loaded session (a stalled one last).
        """
        up = [lane for lane in self._lanes if lane.up]
        if not up:
            return None  # the first session is being (re)opened: wait for it
        for lane in up:
            if lane.load == 0 and not lane.stalled:
                return lane
        if not force and (
            self._can_grow() or any(lane.opening and lane.index != 0 for lane in self._lanes)
        ):
            return None
        return min(up, key=lambda lane: (lane.stalled, lane.load, lane.index))

    def _can_grow(self) -> bool:
        """Whether one more session may be opened now.

        A session held by a slow reader does not count against ``max_sessions`` (its
        capacity is not available to anyone else), up to twice the limit in all.
        """
        usable = sum(1 for lane in self._lanes if not lane.stalled and not lane.retiring)
        return (
            not self._stopping
            and usable < self.settings.max_sessions
            and len(self._lanes) < 2 * self.settings.max_sessions
            and asyncio.get_running_loop().time() >= self._grow_after
            and self.connected
        )

    def _grow_for_waiting(self) -> None:
        """Open sessions for the waiting connections, one each, as far as allowed."""
        opening = sum(1 for lane in self._lanes if lane.opening and lane.index != 0)
        while opening < len(self._waiting) and self._can_grow():
            loop = asyncio.get_running_loop()
            lane = _Lane(max(lane.index for lane in self._lanes) + 1)
            self._lanes.append(lane)
            lane.task = keep_task(loop.create_task(self._serve_extra(lane)))  # type: ignore[assignment]
            opening += 1
        if self._waiting and self._spread_timer is None and any(lane.up for lane in self._lanes):
            # waiting only to be spread: not longer than spread_wait
            self._spread_timer = asyncio.get_running_loop().call_later(
                self.settings.spread_wait, self._spread_expired
            )

    def _spread_expired(self) -> None:
        self._spread_timer = None
        self._place_waiting(force=True)

    def _load_changed(self, lane: _Lane) -> None:
        """An idle session takes a waiting connection; an extra one left idle for
        ``extra_session_idle`` closes, and the first one after ``idle_release``."""
        if not lane.up:
            return
        if lane.load == 0 and self._waiting:
            self._place_waiting()
        primary = self._primary
        if (
            lane.index
            and lane.load == 0
            and primary is not None
            and primary is not lane
            and primary.up
            and primary.load == 0
            and self._idle()
        ):
            # the last connection of the tunnel ended on an extra session: the first one's
            # idle time counts from now
            self._rearm(primary)
        idle_for = self.settings.extra_session_idle if lane.index else self.settings.idle_release
        if idle_for is None:
            return
        if lane.load == 0:
            if lane.idle_timer is None:
                lane.idle_timer = asyncio.get_running_loop().call_later(
                    idle_for, self._close_if_idle, lane
                )
        elif lane.idle_timer is not None:
            lane.idle_timer.cancel()
            lane.idle_timer = None

    def _idle(self) -> bool:
        return all(lane.load == 0 for lane in self._lanes)

    def _rearm(self, lane: _Lane) -> None:
        if self.settings.idle_release is None:
            return
        if lane.idle_timer is not None:
            lane.idle_timer.cancel()
        lane.idle_timer = asyncio.get_running_loop().call_later(
            self.settings.idle_release, self._close_if_idle, lane
        )

    def _close_if_idle(self, lane: _Lane) -> None:
        lane.idle_timer = None
        if lane.index == 0 and lane.up and not self._idle():
            # the first session goes only with the last connection: extra sessions still
            # carry some (when the last of them ends, `_load_changed` arms this again)
            return
        if lane.up and lane.load == 0 and lane.dc is not None:
            what = "extra session" if lane.index else "session, until the next connection"
            log.debug("%r: closing idle %s %s", self, what, lane.dc.session_id)
            lane.retiring = True  # from now on no connection is placed on it
            keep_task(asyncio.ensure_future(lane.dc.close(f"idle {what}")))

    def _place_waiting(self, *, force: bool = False) -> None:
        """Hand waiting connections to sessions, in arrival order, while any will take them;
        open more sessions for those that still wait."""
        for conn in list(self._waiting):
            if conn.closed:
                self._waiting.pop(conn, None)
                continue
            lane = self._choose(force=force)
            if lane is None or lane.handler is None:
                break
            self._waiting.pop(conn, None)
            if conn.wait_timer is not None:
                conn.wait_timer.cancel()
                conn.wait_timer = None
            lane.handler.attach(conn)
        if self._waiting:
            self._grow_for_waiting()
        elif self._spread_timer is not None:
            self._spread_timer.cancel()
            self._spread_timer = None

    # -- local connections ------------------------------------------------------------------

    def _accept(self, conn: _Local) -> None:
        self.metrics.connections_accepted += 1
        if self._demand is not None:
            self._demand.set()
        if self._stopping:
            conn.reset()
            return
        lane = None if self._waiting else self._choose()
        if lane is not None and lane.handler is not None:
            lane.handler.attach(conn)
            return
        self._park(conn)
        self._grow_for_waiting()

    def _park(self, conn: _Local) -> None:
        """Hold a connection until a session takes it, at most ``wait_timeout`` (waking a
        first session that rests)."""
        assert conn.transport is not None
        conn.transport.pause_reading()
        self._waiting[conn] = None
        if self._demand is not None:
            self._demand.set()
        if conn.wait_timer is None:
            conn.wait_timer = asyncio.get_running_loop().call_later(
                self.settings.wait_timeout, conn.wait_expired
            )

    def _mark_dirty(self, conn: _Local) -> None:
        self._dirty.append(conn)
        if self._dirty_handle is None:
            self._dirty_handle = asyncio.get_running_loop().call_soon(self._flush_local)

    def _flush_local(self) -> None:
        self._dirty_handle = None
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

    def _forget_waiting(self, conn: _Local) -> None:
        self._waiting.pop(conn, None)
