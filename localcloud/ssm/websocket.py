"""The data channel endpoint: ``/v1/data-channel/<session id>?role=publish_subscribe``.

What the client does (session-manager-plugin ``datachannel/streaming.go``
``FinalizeDataChannelHandshake``, ``communicator/websocketchannel.go``): it dials the StreamUrl
as given, sends one *text* frame of JSON ``{"MessageSchemaVersion", "RequestId", "TokenValue",
"ClientId", "ClientVersion"}``, and from then on only binary messages. The service checks the
token; a connection whose first frame is not a valid token for that session (wrong, stale,
missing, not text, or late) or that names an unknown or ended session is closed by the
service. AWS does not document how; the stand-in sends a close frame with code 1008 (policy
violation) and the reason below, and tests pin that choice.

A later websocket with a fresh token (from ResumeSession) takes the session over; the earlier
one is dropped. Closing the websocket (by the client or by a fault) leaves the session
``Disconnected``, not ended.

Before any of that, the upgrade itself must be SigV4-signed (``sigv4``), as the service
requires of the plugin since 1.2.764.0: an unsigned or wrongly signed upgrade gets HTTP 403
and no websocket, with a JSON body naming the AWS error code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from typing import TYPE_CHECKING, Any

import tornado.websocket
from tornado.escape import json_encode
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketProtocol13

from spawner.ssm import wsreader

from .faults import FaultyPipe
from .sigv4 import SignatureError

if TYPE_CHECKING:
    from .agent import AgentSession
    from .service import SsmStandIn

log = logging.getLogger(__name__)

CLOSE_REFUSED = 1008
CLOSE_REFUSED_REASON = "The data channel token is not valid for this session."
TOKEN_WAIT = 10.0  # seconds the service waits for the token frame


class _Link:
    """What the agent holds of one websocket: sends go through the outbound fault pipe."""

    __slots__ = ("handler", "pipe")

    def __init__(self, handler: DataChannelHandler, pipe: FaultyPipe) -> None:
        self.handler = handler
        self.pipe = pipe

    def send(self, frames: list[bytes]) -> None:
        self.pipe.push(frames)

    def close(self, code: int, reason: str) -> None:
        self.pipe.close()
        self.handler.read_gate.set()  # a paused reader must see the close
        self.handler.close(code, reason)

    def abort(self) -> None:
        self.pipe.close()
        self.handler.read_gate.set()
        self.handler.abort()

    def pause_reading(self, paused: bool) -> None:
        if paused:
            self.handler.read_gate.clear()
        else:
            self.handler.read_gate.set()


class DataChannelHandler(tornado.websocket.WebSocketHandler):
    """One client websocket of one session."""

    def initialize(self, standin: SsmStandIn) -> None:
        self.standin = standin
        self.session_id = ""
        self.agent: AgentSession | None = None
        self.link: _Link | None = None
        self.inbound: FaultyPipe | None = None
        self._token_timer: Any = None
        #: cleared while the agent cannot take more data (``wsreader`` waits for it)
        self.read_gate = asyncio.Event()
        self.read_gate.set()

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Refuse an upgrade that is not signed by a known principal, then upgrade."""
        request = self.request
        url = f"{request.protocol}://{request.host}{request.uri}"
        try:
            self.standin.verify_upgrade(url, dict(request.headers.get_all()))
        except SignatureError as exc:
            log.info("data channel upgrade refused: %s", exc)
            self.set_status(403)
            self.set_header("Content-Type", "application/json")
            self.set_header("x-amzn-ErrorType", exc.code)
            self.finish(json_encode({"__type": exc.code, "message": exc.message}))
            return
        await super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        return True  # the official client sends no Origin; browsers are not clients here

    def get_compression_options(self) -> None:
        return None

    def get_websocket_protocol(self) -> Any:
        protocol = super().get_websocket_protocol()
        if type(protocol) is WebSocketProtocol13 and wsreader.supported():
            protocol.__class__ = wsreader.BatchReadingProtocol  # same state, faster reader
        return protocol

    def open(self, session_id: str) -> None:  # type: ignore[override]
        self.session_id = session_id
        self.set_nodelay(True)
        loop = self.standin.loop
        self._token_timer = loop.call_later(TOKEN_WAIT, self.refuse)

    def on_message(self, message: str | bytes) -> None:
        if self.agent is None:
            self._authenticate(message)
        elif isinstance(message, bytes) and self.inbound is not None:
            self.inbound.push([message])

    def on_binary_messages(self, messages: list[bytes]) -> None:
        """Binary messages read in one batch (``wsreader``)."""
        if self.agent is None:
            self._authenticate(messages[0])  # a binary first frame is not a token
        elif self.inbound is not None:
            self.inbound.push(messages)

    def _authenticate(self, message: str | bytes) -> None:
        if self._token_timer is not None:
            self._token_timer.cancel()
            self._token_timer = None
        token = None
        if isinstance(message, str):
            try:
                body = json.loads(message)
                token = body.get("TokenValue") if isinstance(body, dict) else None
            except ValueError:
                token = None
        agent = (
            self.standin.agent_for_token(self.session_id, token) if isinstance(token, str) else None
        )
        if agent is None:
            self.refuse()
            return
        loop = self.standin.loop
        faults = self.standin.faults
        outbound = FaultyPipe(
            faults, self.session_id, "to_client", self.write_frames, self.abort, loop.call_later
        )
        self.inbound = FaultyPipe(
            faults, self.session_id, "to_agent", agent.receive_frames, self.abort, loop.call_later
        )
        self.agent = agent
        self.link = _Link(self, outbound)
        self.standin.websocket_attached(self.session_id)
        agent.attach(self.link)

    def refuse(self) -> None:
        """Close a websocket that did not present a valid token."""
        self._token_timer = None
        if self.agent is None:
            self.close(CLOSE_REFUSED, CLOSE_REFUSED_REASON)

    def write_frames(self, frames: list[bytes]) -> None:
        """Send binary messages in one write (tornado writes one ``send`` per message)."""
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return
        stream = getattr(conn, "stream", None)
        if stream is None or getattr(conn, "_compressor", None) is not None:
            for frame in frames:  # pragma: no cover - not the tornado this was written for
                self.write_message(frame, binary=True)
            return
        parts: list[bytes] = []
        append = parts.append
        for frame in frames:
            n = len(frame)
            if n < 126:
                append(bytes((0x82, n)))
            elif n <= 0xFFFF:
                append(struct.pack("!BBH", 0x82, 126, n))
            else:
                append(struct.pack("!BBQ", 0x82, 127, n))
            append(frame)
        try:
            stream.write(b"".join(parts))
        except StreamClosedError:
            pass

    def abort(self) -> None:
        """Drop the connection without a close frame, as a network failure would."""
        conn = self.ws_connection
        if conn is not None:
            conn._abort()

    def on_close(self) -> None:
        if self._token_timer is not None:
            self._token_timer.cancel()
            self._token_timer = None
        if self.inbound is not None:
            self.inbound.close()
        if self.link is not None:
            self.link.pipe.close()
            if self.agent is not None:
                self.agent.detach(self.link)
            self.standin.websocket_detached(self.session_id, self.agent)
