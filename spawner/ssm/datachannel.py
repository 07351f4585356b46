"""One Session Manager session over asyncio: the I/O around the sans-I/O `ChannelConnection`.

`DataChannel` owns exactly one SSM session: the ``StartSession`` call (boto3, in a thread pool,
because boto3 blocks and the hub's event loop must not), the websocket to the ``StreamUrl``,
the token frame, the timer that drives retransmission, and ``TerminateSession`` at the end.
Everything protocol-shaped (sequencing, acks, handshake, payload cutting) lives in
`spawner.ssm.channel`; this module only moves bytes and time into it and frames out of it.

The layer above (smux or basic mode, in `spawner.ssm.tunnel`) sees a byte stream: it calls
`DataChannel.write` / `DataChannel.send_flag` and receives `ChannelListener` callbacks. Flow
control is asyncio-style in both directions: when too many messages wait for an ack the
listener's ``pause_writing`` tells it to stop reading local sockets; when local sockets cannot
take more, the listener calls `DataChannel.pause_reading` and the websocket is not read.

Every upgrade of the websocket is SigV4-signed with the caller's current credentials
(`spawner.ssm.signing`), as the official plugin does since 1.2.764.0.

A lost websocket is not the end of the session. As the plugin does (``sessionhandler.go``
``ResumeSessionHandler``, ``datachannel/streaming.go`` ``Reconnect``), the channel calls
``ResumeSession``, dials the same ``StreamUrl`` again (signed anew), sends the token frame with
the new token and carries on with the same sequence numbers, resend buffer and, above it, the
same smux session: local TCP connections never notice. Unlike the plugin it retransmits every
unacknowledged message at once on the new websocket (the plugin's resend check would take one
per 100 ms) and gives up after ``resume_timeout`` instead of never. Only a refused resume (the
session is gone, a 4xx) or one that times out ends the session; its owner then opens a new one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Protocol

from tornado import httpclient, httputil
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketProtocol13

from . import channel as _channel
from . import wsreader
from .channel import CLIENT_BUFFER_CAPACITY, ChannelConnection, Role
from .messages import Flag, ProtocolError, token_frame
from .metrics import TunnelMetrics
from .signing import (
    CredentialSource,
    client_credentials,
    client_region,
    is_presigned,
    upgrade_headers,
)

log = logging.getLogger(__name__)

DEFAULT_DOCUMENT = "AWS-StartPortForwardingSession"
#: The version of the official plugin whose behaviour this client implements: the release AWS
#: asks for, whose upgrade is SigV4-signed, which resumes a lost websocket with ResumeSession,
#: paces stream data (about 1,000 messages a second) and multiplexes only LocalPortForwarding
#: sessions with agents newer than 3.0.196.0. It matters on the wire too: the agent keeps its
#: own smux keep-alive on (and closes a session silent for 30 s) for clients at or below
#: 1.2.331.0, and the client sends NOPs only to agents at or below 3.1.1511.0 (see
#: `spawner.ssm.smux.needs_keepalive`). With a modern agent an idle session therefore carries
#: no traffic at all and ends at the account's idle timeout (20 min by default); the tunnel's
#: supervisor then opens a new one on the same local port.
DEFAULT_CLIENT_VERSION = "1.2.764.0"
#: Stream-data messages a second that one session sends at most: the plugin sleeps 1 ms after
#: each (``muxportforwarding.go``), and the service is reported to carry about that many.
DEFAULT_PACE = 1000.0
#: Messages that may leave at once before pacing applies, so that a small request never waits.
DEFAULT_PACE_BURST = 64
#: How long a lost websocket may take to come back (ResumeSession + signed dial) before the
#: session is given up and a new one is opened instead.
DEFAULT_RESUME_TIMEOUT = 30.0
#: What a 403 on the upgrade means, for whoever reads the error: the two causes AWS documents.
OPEN_DATA_CHANNEL_DENIED = (
    "HTTP 403 on the data channel upgrade: the caller needs ssmmessages:OpenDataChannel on "
    "arn:aws:ssm:<region>:<account>:session/<session id> (AWS's example policies grant it on "
    "session/${aws:userid}-*), and the upgrade must be SigV4-signed with current credentials"
)
#: The official client pings every 5 minutes; a shorter interval keeps NAT and load-balancer
#: idle timers (often 60-350 s) from dropping a quiet websocket.
DEFAULT_PING_INTERVAL = 60.0
#: SSM frames are at most 120 + 1024 bytes; a session's control messages are small JSON. The
#: bound only keeps a misbehaving server from making us buffer without limit.
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
#: Messages in flight (unacknowledged) above which local sockets stop being read. 1 MiB of
#: payload in flight covers 10 MB/s at 100 ms round trip while bounding memory and latency.
DEFAULT_MAX_UNACKED = 1024
#: The retransmission timer never fires sooner than this after it is armed (the channel's
#: 10 ms clock granularity), so a deadline already in the past cannot make the loop spin.
_MIN_TIMER_GAP = 0.01

_shared_executor: ThreadPoolExecutor | None = None
_signing_executor: ThreadPoolExecutor | None = None


def shared_executor() -> Executor:
    """The thread pool for boto3 calls of every tunnel that was not given one.

    Separate from the loop's default executor so that a burst of StartSession calls after a
    network blip cannot starve the hub's own DNS lookups and file I/O.
    """
    global _shared_executor
    if _shared_executor is None:
        _shared_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ssm-api")
    return _shared_executor


def signing_executor() -> Executor:
    """Threads for reading credentials and signing upgrades, apart from the API calls.

    Signing is quick unless a credential refresh blocks; after a network blip hundreds of
    tunnels resume at once and their ResumeSession calls may hang in the API pool, and the
    signatures of the resumes that did get a token must not queue behind them.
    """
    global _signing_executor
    if _signing_executor is None:
        _signing_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ssm-sign")
    return _signing_executor


class SessionError(Exception):
    """A session could not be opened; ``call`` names the step for the operator."""

    def __init__(self, call: str, message: str, *, code: str | None = None) -> None:
        super().__init__(f"{call} failed: {message}")
        self.call = call
        self.code = code
        self.message = message


def describe_error(exc: BaseException) -> tuple[str | None, str]:
    """(error code, one-line message) of a boto3/botocore or other exception."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error") or {}
        code = err.get("Code")
        message = err.get("Message") or str(exc)
        return code, f"{code}: {message}" if code else message
    name = type(exc).__name__
    text = str(exc) or name
    if name == "NoCredentialsError":
        return name, "no AWS credentials found (environment, profile or instance role)"
    return name, text if name in text else f"{name}: {text}"


class ChannelListener(Protocol):
    """What the layer above a `DataChannel` implements (named like asyncio's protocols)."""

    def data_received(self, data: bytes) -> None:
        """Output payload bytes from the agent, in order, exactly once."""

    def flag_received(self, flag: Flag) -> None:
        """A Flag payload from the agent (e.g. ConnectToPortError)."""

    def pause_writing(self) -> None:
        """Too much is waiting for acks: stop reading local sockets."""

    def resume_writing(self) -> None:
        """Acks drained the resend buffer: read local sockets again."""


class WebSocket(Protocol):
    """The few websocket operations a `DataChannel` needs; a seam for tests."""

    def start(self, on_message: Callable[[bytes | str], Awaitable[None] | None]) -> None:
        """Deliver each later message to ``on_message``, synchronously, in order.

        When ``on_message`` returns an awaitable, no further message is read until it is
        done: that is how the receiving side applies backpressure.
        """

    async def wait_closed(self) -> None:
        """Return once the connection is closed (by either side or by an error)."""

    def send_text(self, text: str) -> None: ...

    def send_frames(self, frames: Sequence[bytes]) -> None:
        """Send each element as one binary message, in order, without waiting."""

    def close(self) -> None: ...

    @property
    def close_code(self) -> int | None: ...

    @property
    def close_reason(self) -> str | None: ...


#: Dials ``url`` with the given extra headers (the signature) and returns the open websocket.
WebSocketConnector = Callable[[str, Mapping[str, str]], Awaitable[WebSocket]]


class BatchClientConnection(WebSocketClientConnection):
    """Tornado's client connection, reading frames in batches (`spawner.ssm.wsreader`): at
    thousands of 1 KiB messages a second, tornado's frame-by-frame reader was most of the
    hub's CPU time in a busy tunnel. Messages still reach ``on_message`` one by one and in
    order; an awaitable it returns (the data channel's read gate) stops the reading until
    it is done, as with tornado's own reader."""

    def get_websocket_protocol(self) -> WebSocketProtocol13:
        protocol = super().get_websocket_protocol()
        if type(protocol) is WebSocketProtocol13 and wsreader.supported():
            protocol.__class__ = wsreader.BatchReadingProtocol  # same state, faster reader
        return protocol

    def on_binary_messages(self, messages: list[bytes]) -> Awaitable[None] | None:
        for i, message in enumerate(messages):
            result = self.on_message(message)
            if result is not None:
                return self._after(result, messages[i + 1 :])
        return None

    async def _after(self, result: Awaitable[None], rest: list[bytes]) -> None:
        await result
        if rest:
            more = self.on_binary_messages(rest)
            if more is not None:
                await more


class TornadoWebSocket:
    """`WebSocket` over tornado's client connection.

    Messages are taken from tornado's frame loop by replacing the connection's ``on_message``:
    tornado then hands over every frame already buffered in one go (instead of one per loop
    iteration through its read queue), which lets acks and local writes batch, and it awaits
    what ``on_message`` returns before reading on, which is the receive backpressure.

    Binary messages are framed here and handed to the connection's stream in one write per
    batch: tornado's ``write_message`` creates a task per message and issues one ``send`` per
    frame, which is most of the cost at thousands of 1 KiB messages per second. Anything that
    does not look like the tornado internals this relies on falls back to ``write_message``.
    """

    __slots__ = ("_conn", "_mask", "_on_message", "_stream")

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._stream = None
        self._mask: Callable[[bytes, bytes], bytes] | None = None
        self._on_message: Callable[[bytes | str], Awaitable[None] | None] | None = None
        protocol = getattr(conn, "protocol", None)
        try:
            from tornado.util import _websocket_mask

            if getattr(protocol, "mask_outgoing", False) and not getattr(
                protocol, "_compressor", None
            ):
                self._stream = protocol.stream
                self._mask = _websocket_mask
        except (ImportError, AttributeError):  # pragma: no cover - other tornado versions
            self._stream = None
        if protocol is not None:
            try:
                protocol.set_nodelay(True)  # acks and small requests must not wait for Nagle
            except Exception:  # pragma: no cover - e.g. stream already closed
                pass

    def start(self, on_message: Callable[[bytes | str], Awaitable[None] | None]) -> None:
        self._on_message = on_message
        self._conn.on_message = on_message  # what tornado's protocol calls for each message

    async def wait_closed(self) -> None:
        # With on_message replaced, only the end of the connection (None) reaches the read
        # queue, plus anything that arrived before start().
        while True:
            message = await self._conn.read_message()
            if message is None:
                return
            if self._on_message is not None:
                result = self._on_message(message)
                if result is not None:
                    await result

    def send_text(self, text: str) -> None:
        self._conn.write_message(text)

    def send_frames(self, frames: Sequence[bytes]) -> None:
        stream, mask = self._stream, self._mask
        if stream is None or mask is None:
            for frame in frames:
                self._conn.write_message(frame, binary=True)
            return
        masks = os.urandom(4 * len(frames))
        parts: list[bytes] = []
        append = parts.append
        for i, frame in enumerate(frames):
            n = len(frame)
            if n < 126:
                append(bytes((0x82, 0x80 | n)))
            elif n <= 0xFFFF:
                append(struct.pack("!BBH", 0x82, 0xFE, n))
            else:
                append(struct.pack("!BBQ", 0x82, 0xFF, n))
            key = masks[4 * i : 4 * i + 4]
            append(key)
            append(mask(key, frame))
        stream.write(b"".join(parts))

    def close(self) -> None:
        self._conn.close()

    @property
    def close_code(self) -> int | None:
        return getattr(self._conn, "close_code", None)

    @property
    def close_reason(self) -> str | None:
        return getattr(self._conn, "close_reason", None)


def tornado_connector(
    *,
    connect_timeout: float = 10.0,
    ping_interval: float | None = DEFAULT_PING_INTERVAL,
    ping_timeout: float | None = 0.0,
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> WebSocketConnector:
    """A connector dialling the StreamUrl as given, with the signature headers, uncompressed.

    ``ping_timeout=0`` sends pings without requiring pongs, as the official client does; a
    positive value closes the websocket when no pong arrives in time (a dead path is then
    noticed within ``ping_interval + ping_timeout``).
    """

    import tornado

    if not ping_timeout and tornado.version_info < (6, 5):
        # Before 6.5 a zero timeout closed the connection at the second ping; a huge one
        # never expires. From 6.5 on, 0 is the documented "no pong needed".
        ping_timeout = 10.0 * 365 * 24 * 3600

    async def connect(url: str, headers: Mapping[str, str]) -> WebSocket:
        # tornado's websocket_connect, with the batch frame reader (`BatchClientConnection`)
        headers = httputil.HTTPHeaders(dict(headers))
        request = HTTPRequest(url, headers=headers, connect_timeout=connect_timeout)
        conn = BatchClientConnection(
            httpclient._RequestProxy(request, httpclient.HTTPRequest._DEFAULTS),
            compression_options=None,
            ping_interval=ping_interval or None,
            ping_timeout=ping_timeout,
            max_message_size=max_message_size,
        )
        return TornadoWebSocket(await conn.connect_future)

    return connect


_background: set[asyncio.Future[Any]] = set()


#: Error codes of a 4xx answer to ResumeSession that retrying can fix.
_RETRY_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestTimeout"}
)


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a failed botocore call or websocket upgrade, if it had one."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    code = getattr(exc, "code", None)  # tornado's HTTPClientError
    return code if isinstance(code, int) and 100 <= code < 600 else None


def keep_task(task: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """Hold a reference to a fire-and-forget task until it ends (asyncio keeps weak ones)."""
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


class DataChannel:
    """One SSM port-forwarding session, from StartSession to TerminateSession.

    Use: ``await open()``; read `agent_version` and `session_properties` to choose smux or
    basic mode; `set_listener`; then `write` / `send_flag`; `wait_closed` tells how the session
    ended; `close` ends it. A DataChannel is not reusable: a new session is a new object.

    ``credentials`` (default: those of ``ssm_client``) and ``region`` (default: the client's)
    sign each upgrade; ``pace`` / ``pace_burst`` pace stream data; ``resume_timeout`` bounds a
    resume (0: never resume); ``metrics`` counts resumes.
    """

    def __init__(
        self,
        ssm_client: Any,
        target: str,
        remote_port: int,
        *,
        executor: Executor | None = None,
        document_name: str = DEFAULT_DOCUMENT,
        parameters: dict[str, list[str]] | None = None,
        client_version: str = DEFAULT_CLIENT_VERSION,
        connector: WebSocketConnector | None = None,
        connect_timeout: float = 10.0,
        handshake_timeout: float = 20.0,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        ping_timeout: float | None = 0.0,
        max_unacked: int = DEFAULT_MAX_UNACKED,
        terminate_timeout: float = 10.0,
        credentials: CredentialSource | None = None,
        region: str | None = None,
        pace: float | None = DEFAULT_PACE,
        pace_burst: int = DEFAULT_PACE_BURST,
        resume_timeout: float = DEFAULT_RESUME_TIMEOUT,
        metrics: TunnelMetrics | None = None,
    ) -> None:
        # Long: every keyword argument kept, each documented above.
        self.target = target
        self.remote_port = remote_port
        self.document_name = document_name
        self.client_version = client_version
        self.client_id = str(uuid.uuid4())
        self.session_id: str | None = None
        self.stream_url: str | None = None
        self.agent_version: str | None = None
        #: the document's parameters as the agent's handshake passed them (``type`` among them)
        self.session_properties: dict[str, Any] = {}
        self._ssm = ssm_client
        self._credentials = credentials or client_credentials(ssm_client)
        self._region = region or client_region(ssm_client)
        self._pace = pace
        self._pace_burst = pace_burst
        self._resume_timeout = resume_timeout
        self._metrics = metrics
        self._resuming = False
        self._resume_deadline: float | None = None  # kept while resumed sockets stay silent
        self._heard = False  # something arrived on the current websocket
        self._executor = executor
        self._parameters = {"portNumber": [str(remote_port)], "localPortNumber": ["0"]}
        if parameters:
            self._parameters.update(parameters)
        self._connector = connector or tornado_connector(
            connect_timeout=connect_timeout, ping_interval=ping_interval, ping_timeout=ping_timeout
        )
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._terminate_timeout = terminate_timeout
        self._high = max(1, min(max_unacked, CLIENT_BUFFER_CAPACITY - 1024))
        self._low = self._high // 2

        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws: WebSocket | None = None
        self._conn: ChannelConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._handshake: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[str] | None = None
        self._closing = False
        self._terminate_task: asyncio.Future[None] | None = None
        self._starting: asyncio.Future[Any] | None = None
        self._listener: ChannelListener | None = None
        self._pending: list[Any] = []  # events that arrived before set_listener
        self._out: list[bytes] = []  # bytes written since the last flush
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._local_paused = False
        self._read_gate: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<DataChannel {self.target}:{self.remote_port} session={self.session_id}>"

    # -- opening -------------------------------------------------------------------------

    async def _call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor or shared_executor(), functools.partial(method, **kwargs)
        )

    def _signed_headers(self, url: str) -> dict[str, str]:
        """The upgrade's SigV4 headers with the credentials of this moment (blocking)."""
        if is_presigned(url):
            return {}
        credentials = self._credentials()
        if credentials is None:
            log.warning("%r: no AWS credentials to sign the data channel with", self)
            return {}
        if not self._region:
            log.warning("%r: no region to sign the data channel for", self)
            return {}
        return upgrade_headers(url, credentials, self._region)

    async def _dial(self, timeout: float | None = None) -> WebSocket:
        """Sign (in a thread: a credential refresh may block) and open the websocket, within
        ``timeout`` seconds in all (default: the connect timeout)."""
        assert self.stream_url is not None
        url = self.stream_url
        loop = asyncio.get_running_loop()
        limit = self._connect_timeout + 1.0 if timeout is None else timeout
        deadline = loop.time() + limit
        signing = loop.run_in_executor(signing_executor(), self._signed_headers, url)
        headers = await asyncio.wait_for(signing, limit)
        try:
            connecting = self._connector(url, headers)
            remaining = max(0.0, min(self._connect_timeout + 1.0, deadline - loop.time()))
            return await asyncio.wait_for(connecting, remaining)
        except Exception as exc:
            if _http_status(exc) == 403:
                raise SessionError(
                    "websocket connect", OPEN_DATA_CHANNEL_DENIED, code="AccessDeniedException"
                ) from exc
            raise

    @property
    def resuming(self) -> bool:
        """The websocket was lost and is being resumed: nothing arrives meanwhile."""
        return self._resuming

    async def open(self) -> None:
        """StartSession, websocket, token frame, handshake: returns once data may flow.

        Raises `SessionError` naming the step that failed; a session that was started is
        terminated again before the error propagates.
        """
        # Long: the plugin's opening sequence in order (StartSession, dial, token,
        # handshake), each failure named.
        loop = self._loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        starting = self._starting = loop.run_in_executor(
            self._executor or shared_executor(),
            functools.partial(
                self._ssm.start_session,
                Target=self.target,
                DocumentName=self.document_name,
                Parameters=self._parameters,
            ),
        )
        try:
            response = await asyncio.shield(starting)
        except asyncio.CancelledError:
            # The call goes on in its thread; a session it opens must not be left running.
            starting.add_done_callback(lambda _: self._adopt_orphan())
            self._finish("cancelled while opening", terminate=False)
            raise
        except Exception as exc:
            code, message = describe_error(exc)
            self._finish(f"StartSession failed: {message}", terminate=False)
            raise SessionError("StartSession", message, code=code) from exc
        self.session_id = response["SessionId"]
        self.stream_url = response["StreamUrl"]
        token = response["TokenValue"]
        step = "websocket connect"
        try:
            self._ws = await self._dial()
            step = "handshake"
            self._conn = ChannelConnection(
                Role.CLIENT,
                now=loop.time(),
                client_version=self.client_version,
                epoch_offset=time.time() - loop.time(),  # CreatedDate is epoch milliseconds
                # The plugin drops duplicates silently; if one of its acks was lost, the agent
                # (which resends only its oldest message) would stall. A second ack is harmless.
                reack_duplicates=True,
                pace=self._pace,
                pace_burst=self._pace_burst,
            )
            self._ws.send_text(
                token_frame(
                    token,
                    request_id=str(uuid.uuid4()),
                    client_id=self.client_id,
                    client_version=self.client_version,
                )
            )
            self._handshake = loop.create_future()
            self._ws.start(self._on_message)
            self._reader = loop.create_task(self._watch())
            await asyncio.wait_for(asyncio.shield(self._handshake), self._handshake_timeout)
        except asyncio.CancelledError:
            self._finish("cancelled while opening", terminate=True)
            raise
        except SessionError as exc:
            self._finish(str(exc), terminate=True)
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError | asyncio.TimeoutError):
                message = f"no answer within {self._handshake_timeout:g} s"
                if step != "handshake":
                    message = f"no connection within {self._connect_timeout:g} s"
            else:
                message = describe_error(exc)[1]
            self._finish(f"{step} failed: {message}", terminate=True)
            raise SessionError(step, message) from exc
        log.debug(
            "session %s to %s port %s up, agent %s",
            self.session_id,
            self.target,
            self.remote_port,
            self.agent_version,
        )

    # -- the layer above -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def writable(self) -> bool:
        """False while the resend buffer is above its high-water mark."""
        return not self._local_paused

    @property
    def in_flight(self) -> int:
        """Messages sent and not yet acknowledged."""
        return self._conn.resend_buffer_size if self._conn is not None else 0

    def set_listener(self, listener: ChannelListener) -> None:
        """Attach the layer above; events received since the handshake are replayed to it."""
        self._listener = listener
        pending, self._pending = self._pending, []
        for event in pending:
            self._dispatch(event)
        if self._local_paused:
            listener.pause_writing()

    def write(self, data: bytes) -> None:
        """Queue bytes for the agent; they leave at the end of this loop iteration."""
        if self._closing or not data:
            return
        self._out.append(data)
        self._schedule_flush()

    def send_flag(self, flag: Flag) -> None:
        """Queue a Flag message after any bytes written before it."""
        if self._closing or self._conn is None:
            return
        now = self._now()
        self._move_out(now)
        self._conn.send_flag(flag, now)
        self._schedule_flush()

    def pause_reading(self) -> None:
        """Stop reading the websocket (local sockets cannot take more); idempotent."""
        if self._read_gate is None and self._loop is not None:
            self._read_gate = self._loop.create_future()

    def resume_reading(self) -> None:
        gate, self._read_gate = self._read_gate, None
        if gate is not None and not gate.done():
            gate.set_result(None)

    async def wait_closed(self) -> str:
        """Wait for the session to end; returns why it ended."""
        assert self._closed is not None, "open() first"
        return await asyncio.shield(self._closed)

    @property
    def close_reason(self) -> str | None:
        if self._closed is not None and self._closed.done():
            return self._closed.result()
        return None

    async def close(self, reason: str = "closed by client", *, terminate: bool = True) -> None:
        """End the session: TerminateSession flag to the agent, then the API call.

        Safe to call at any time and more than once; waits (bounded) for the API call.
        """
        if not self._closing and terminate and self._conn is not None and self._ws is not None:
            if self._conn.handshake_complete:
                try:
                    self.send_flag(Flag.TERMINATE_SESSION)
                    self._flush()
                except Exception:  # the flag is a courtesy; the API call is what counts
                    log.debug("%r: could not send TerminateSession flag", self, exc_info=True)
        self._finish(reason, terminate=terminate)
        starting = self._starting
        if starting is not None and not starting.done():  # cancelled during StartSession
            await asyncio.wait({starting}, timeout=self._terminate_timeout)
            self._adopt_orphan()
        task = self._terminate_task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), self._terminate_timeout)
            except TimeoutError:
                log.warning("%r: TerminateSession still running after close", self)

    # -- internals -------------------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def _watch(self) -> None:
        """Follow the websocket; when it is lost under a live session, resume the session."""
        while True:
            ws = self._ws
            assert ws is not None
            try:
                await ws.wait_closed()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"websocket error: {describe_error(exc)[1]}"
            else:
                code, why = ws.close_code, ws.close_reason
                reason = f"websocket closed (code {code}{', ' + why if why else ''})"
            if self._closing:
                return
            if not self._resumable:
                self._finish(reason, terminate=True)
                return
            if not await self._resume(reason):
                return

    @property
    def _resumable(self) -> bool:
        """A lost websocket can be resumed once the session is up (not during the handshake)."""
        conn = self._conn
        return conn is not None and conn.handshake_complete and self._resume_timeout > 0

    async def _resume(self, lost: str) -> bool:
        """ResumeSession, signed dial, token frame, go-back-N; False once the session is over.

        A 4xx answer (the session is gone, access denied) or an answer without a token (the
        plugin reads that as "timed out") ends the session at once; network errors, throttling
        and 5xx are retried with backoff until ``resume_timeout``. Resumed websockets that
        close again before anything arrived on them share one deadline, so a service that
        keeps refusing the token cannot keep the session resuming for ever.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        if self._heard or self._resume_deadline is None:
            self._resume_deadline = started + self._resume_timeout
        deadline = self._resume_deadline
        self._ws = None
        self._resuming = True
        self._heard = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        log.info("%r: %s; resuming the session", self, lost)
        try:
            return await self._resume_until(deadline, started, lost)
        finally:
            self._resuming = False

    async def _resume_until(self, deadline: float, started: float, lost: str) -> bool:
        loop = asyncio.get_running_loop()
        failure = f"no resume within {self._resume_timeout:g} s"
        delay = 0.1
        while not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                answer = await asyncio.wait_for(
                    self._call(self._ssm.resume_session, SessionId=self.session_id), remaining
                )
                token = answer.get("TokenValue")
                if not token:
                    return self._resume_failed(
                        "ResumeSession: the session has ended", lost, terminate=False
                    )
                ws = await self._dial(max(0.1, deadline - loop.time()))
            except asyncio.CancelledError:
                raise
            except SessionError as exc:  # 403 on the upgrade: retrying cannot help
                return self._resume_failed(str(exc), lost, terminate=True)
            except Exception as exc:
                code, message = describe_error(exc)
                status = _http_status(exc)
                if status is not None and 400 <= status < 500 and code not in _RETRY_CODES:
                    return self._resume_failed(f"ResumeSession: {message}", lost, terminate=True)
                failure = message if not isinstance(exc, TimeoutError) else failure
                await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
                delay = min(delay * 2, 2.0)
                continue
            if self._closing:
                ws.close()
                return False
            self._ws = ws
            ws.send_text(
                token_frame(
                    token,
                    request_id=str(uuid.uuid4()),
                    client_id=self.client_id,
                    client_version=self.client_version,
                )
            )
            assert self._conn is not None
            self._conn.resend_all(self._now())
            ws.start(self._on_message)
            self._resuming = False
            took = loop.time() - started
            if self._metrics is not None:
                self._metrics.resumes += 1
                self._metrics.resume_seconds_total += took
                self._metrics.last_resume_seconds = took
            log.info("%r: resumed in %.2fs", self, took)
            self._flush()
            return True
        return self._resume_failed(failure, lost, terminate=True)

    def _resume_failed(self, why: str, lost: str, *, terminate: bool) -> bool:
        self._resuming = False
        if self._metrics is not None:
            self._metrics.resume_failures += 1
        self._finish(f"resume failed: {why} (after {lost})", terminate=terminate)
        return False

    def _on_message(self, message: bytes | str) -> asyncio.Future[None] | None:
        """Called by the websocket for every message; returns the read gate when paused."""
        if self._closing:
            return None
        self._heard = True
        if isinstance(message, str):
            log.debug("%r: ignoring text message %.200s", self, message)
            return None
        try:
            self._on_frame(message)
        except Exception as exc:  # a bug above us must not leave the session half-alive
            log.exception("%r: error handling a message", self)
            self._finish(f"internal error: {exc!r}", terminate=True)
            return None
        return self._read_gate

    def _on_frame(self, frame: bytes) -> None:
        conn = self._conn
        assert conn is not None
        try:
            events = conn.receive(frame, self._now())
        except ProtocolError as exc:
            # The official client logs undecodable messages and carries on.
            log.warning("%r: dropping invalid message: %s", self, exc)
            return
        for event in events:
            self._dispatch(event)
            if self._closing:
                return
        self._schedule_flush()  # acks
        self._check_window()

    def _dispatch(self, event: Any) -> None:
        listener = self._listener
        if isinstance(event, _channel.DataReceived):
            if listener is None:
                self._pending.append(event)
            else:
                listener.data_received(event.data)
        elif isinstance(event, _channel.FlagReceived):
            if listener is None:
                self._pending.append(event)
            else:
                listener.flag_received(event.flag)
        elif isinstance(event, _channel.HandshakeRequested):
            self.agent_version = event.agent_version
            props = event.properties
            self.session_properties = dict(props) if isinstance(props, dict) else {}
        elif isinstance(event, _channel.HandshakeCompleted):
            if self.agent_version is None:
                self.agent_version = getattr(self._conn, "agent_version", None)
            if self._handshake is not None and not self._handshake.done():
                self._handshake.set_result(None)
        elif isinstance(event, _channel.ChannelClosed):
            output = getattr(event, "output", "") or ""
            self._finish(f"channel_closed{': ' + output if output else ''}", terminate=False)
        elif isinstance(event, _channel.GaveUp):
            # The official client terminates the session when a message was resent too often.
            self._finish(f"gave up: {getattr(event, 'reason', '')}", terminate=True)
        else:
            log.debug("%r: %s", self, event)

    def _move_out(self, now: float) -> None:
        out = self._out
        if out and self._conn is not None:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._conn.send_data(data, now)

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and not self._closing and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Move written bytes into the channel and the channel's frames onto the websocket."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        conn, ws = self._conn, self._ws
        if self._closing or conn is None:
            return
        now = self._now()
        self._move_out(now)
        if ws is None:
            # Resuming: what was queued is in the resend buffer (acks excepted, which the agent
            # makes good by resending); `resend_all` puts it on the new websocket.
            conn.frames_to_send()
            self._check_window()
            return
        frames = conn.frames_to_send()
        if frames:
            try:
                ws.send_frames(frames)
            except Exception as exc:
                reason = f"websocket write failed: {describe_error(exc)[1]}"
                if not self._resumable:
                    self._finish(reason, terminate=True)
                    return
                # The frames are in the resend buffer; the watcher sees the close and resumes.
                log.info("%r: %s", self, reason)
                ws.close()
                return
        self._arm_timer(now)
        self._check_window()

    def _arm_timer(self, now: float) -> None:
        conn = self._conn
        assert conn is not None and self._loop is not None
        deadline = conn.next_deadline()
        if deadline is None:
            return  # a timer already armed fires once and finds nothing to do
        deadline = max(deadline, now + _MIN_TIMER_GAP)
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # fires early, ticks for nothing, re-arms: cheaper than re-scheduling
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        if self._closing or self._conn is None:
            return
        events = self._conn.tick(self._now())
        for event in events or ():
            self._dispatch(event)
            if self._closing:
                return
        if getattr(self._conn, "gave_up", False):
            self._finish("gave up: retransmission limit reached", terminate=True)
            return
        self._flush()

    def _check_window(self) -> None:
        conn = self._conn
        if conn is None:
            return
        n = conn.resend_buffer_size
        if not self._local_paused:
            if n >= self._high:
                self._local_paused = True
                if self._listener is not None:
                    self._listener.pause_writing()
        elif n <= self._low:
            self._local_paused = False
            if self._listener is not None:
                self._listener.resume_writing()

    def _finish(self, reason: str, *, terminate: bool) -> None:
        """Tear down the I/O once; ``terminate`` also ends the session at the service."""
        if self._closing:
            return
        self._closing = True
        log.debug("%r ends: %s", self, reason)
        for handle in (self._flush_handle, self._timer):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._timer = None
        self.resume_reading()
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # pragma: no cover - closing a broken socket
                log.debug("%r: websocket close failed", self, exc_info=True)
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task() and not reader.done():
            reader.cancel()
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ConnectionError(reason))
            self._handshake.exception()  # retrieved: open() reports it, or nobody waits
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(reason)
        if terminate and self.session_id is not None and self._terminate_task is None:
            self._terminate_task = keep_task(asyncio.ensure_future(self._terminate()))

    def _adopt_orphan(self) -> None:
        """Terminate the session of a StartSession call whose caller stopped waiting."""
        starting = self._starting
        if (
            self.session_id is not None
            or starting is None
            or not starting.done()
            or starting.cancelled()
            or starting.exception() is not None
        ):
            return
        self.session_id = starting.result().get("SessionId")
        if self.session_id is not None and self._terminate_task is None:
            self._terminate_task = keep_task(asyncio.ensure_future(self._terminate()))

    async def _terminate(self) -> None:
        try:
            await self._call(self._ssm.terminate_session, SessionId=self.session_id)
        except Exception as exc:
            log.info("TerminateSession %s failed: %s", self.session_id, describe_error(exc)[1])
