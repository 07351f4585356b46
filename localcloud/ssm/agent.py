"""The agent side of one session: the data channel in the AGENT role, driven by asyncio.

Protocol rules live in ``spawner.ssm.channel.ChannelConnection`` (played here in its agent
role: duplicates are re-acknowledged, nothing is acknowledged or delivered while the port side
is not ready) and in ``spawner.ssm.smux`` (server side); this module moves frames, bytes and
time between them, the websocket and the TCP connections of ``ports``.

Order of events, as SSM Agent does it (``sessionplugin.go``, ``datachannel.go``):
the agent sends HandshakeRequest (its version; the document's properties) as soon as its data
channel is up, waits up to 15 s for the client's HandshakeResponse, sends HandshakeComplete,
and only then starts the port plugin, which refuses data until it is initialised.

Performance: everything runs in callbacks, never a task per message. Output produced in one
loop iteration (TCP reads, acks, smux frames) is flushed once, by a ``call_soon``, so the
websocket gets one write per batch and smux frames straddle 1024-byte payloads as on the
real agent. Reading the target sockets stops while too many messages await an ack.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from spawner.ssm import channel as channel_module
from spawner.ssm import messages
from spawner.ssm.channel import ChannelConnection, Role
from spawner.ssm.messages import Flag

from .faults import message_type_of
from .ports import BasicPort, MuxPorts, use_mux
from .registry import Resolver

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_MESSAGE = (
    "Handshake timed out. Please ensure that you have the latest version of the session "
    "manager plugin."
)
IDLE_TIMEOUT_MESSAGE = "Your session timed out due to inactivity and has been terminated."
RECONNECT_TIMEOUT_MESSAGE = (
    "The client did not reconnect to the disconnected session in time; it has been terminated."
)


@dataclass
class AgentSettings:
    """Knobs of the simulated agent and service, per session."""

    #: seconds without stream data before the service ends the session (AWS: 20 min default)
    idle_timeout: float = 20 * 60
    #: extra seconds between HandshakeComplete and the port side being ready (tests)
    ready_delay: float = 0.0
    #: stop reading target sockets when this many messages await an ack
    max_in_flight: int = 2048
    #: the agent's outgoing buffer capacity (config.go OutgoingMessageBufferCapacity)
    resend_buffer: int = 100_000
    #: seconds the service keeps a session whose client websocket is gone (``Disconnected``)
    #: for a ResumeSession, before it ends it; AWS does not document the figure
    reconnect_timeout: float = 60.0
    #: stream-data messages per second the service carries per session and direction (the
    #: reported ~1,000), with bursts of ``message_burst``; None: unlimited (unit tests)
    message_rate: float | None = None
    message_burst: int = 64
    #: on a resumed websocket, replay at once what the agent sent and the client has not
    #: acknowledged (see ``AgentSession.attach``); False: only the agent's resend check
    #: repairs it, one message per 100 ms, as ``ResendStreamDataMessageScheduler`` does
    replay_on_resume: bool = True


class ClientLink(Protocol):
    """The websocket to the client, as the agent sees it (faults already applied)."""

    def send(self, frames: list[bytes]) -> None: ...

    def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None: ...

    def pause_reading(self, paused: bool) -> None: ...


def channel_closed_frame(session_id: str, destination: str, output: str) -> bytes:
    """The service's ``channel_closed`` message; the client stops when it reads one
    (plugin ``HandleChannelClosedMessage``: it prints ``Output`` when there is one)."""
    message_id = uuid.uuid4()
    now_ms = int(time.time() * 1000)
    created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_ms / 1000))
    payload = messages.channel_closed_payload(
        session_id,
        output,
        message_id=str(message_id),
        created_date=f"{created}.{now_ms % 1000:03d}Z",
        destination_id=destination,
    )
    return messages.encode(
        messages.ClientMessage(
            message_type=messages.MessageType.CHANNEL_CLOSED.value,
            sequence_number=0,
            flags=messages.ACK_FLAGS,
            message_id=message_id,
            payload_type=messages.PayloadType.UNDEFINED,
            payload=payload,
            created_date=now_ms,
        )
    )


class AgentSession:
    """SSM Agent for one session, plus the service-side timers (idle timeout) around it.

    ``on_end(output, failed)`` is called once when the session ends from this side (client's
    TerminateSession flag, handshake or dial failure, idle timeout); the owner marks the
    record and the websocket is closed here.
    """

    def __init__(
        self,
        *,
        session_id: str,
        instance_id: str,
        agent_version: str,
        properties: dict[str, str],
        resolver: Resolver,
        settings: AgentSettings,
        on_end: Callable[[str, bool], None],
    ) -> None:
        self.session_id = session_id
        self.instance_id = instance_id
        self.agent_version = agent_version
        self.properties = dict(properties)
        self.remote_port = int(self.properties.get("portNumber", "0") or 0)
        self.resolver = resolver
        self.settings = settings
        self._on_end = on_end
        self.loop = asyncio.get_running_loop()
        self.conn = ChannelConnection(
            Role.AGENT,
            now=self.loop.time(),
            agent_version=agent_version,
            session_type="Port",
            properties=dict(sorted(self.properties.items())),  # Go marshals map keys sorted
            resend_buffer=settings.resend_buffer,
            epoch_offset=time.time() - self.loop.time(),
            pace=settings.message_rate,  # the service's rate, modelled on the agent's side
            pace_burst=settings.message_burst,
        )
        self.link: ClientLink | None = None
        self.ports: MuxPorts | BasicPort | None = None
        self.client_version: str | None = None
        self.started = False
        self.ended = False
        self.ready = False
        self.last_activity = self.loop.time()
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._ready_timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._blocked_targets = 0  # target sockets whose write buffer is full
        self._reconnect_timer: asyncio.TimerHandle | None = None
        # the service's rate on what the client sends (the agent's own sends are paced)
        self._inbox: deque[bytes] = deque()
        self._inbox_timer: asyncio.TimerHandle | None = None
        self._tokens = float(settings.message_burst)
        self._tokens_at = self.loop.time()
        self.stats = {"frames_in": 0, "frames_out": 0, "bytes_to_target": 0}
        self._arm_idle_timer()  # a session nobody connects to times out as well

    # -- the websocket ---------------------------------------------------------------------
    def attach(self, link: ClientLink) -> None:
        """A websocket with a valid token: it replaces any earlier one of this session.

        On a resumed session the service replays what the agent sent and the client has not
        acknowledged (``replay_on_resume``): the Message Gateway Service relays between the
        two websockets and whether it keeps the agent's messages for a resumed client is not
        documented; without the replay the agent's resend check (oldest message only, every
        100 ms) would take minutes to repair a full window, and that is not what users of
        the official client report.
        """
        old, self.link = self.link, link
        if old is not None:
            old.abort()
        if self._reconnect_timer is not None:
            self._reconnect_timer.cancel()
            self._reconnect_timer = None
        self._update_reading()
        if not self.started:
            self.started = True
            self.conn.start_handshake(self.loop.time())
        elif self.settings.replay_on_resume:
            self.conn.resend_all(self.loop.time())
        self._flush()

    def detach(self, link: ClientLink) -> None:
        """The websocket is gone; the session lives on for ``reconnect_timeout`` seconds."""
        if self.link is link:
            self.link = None
            if not self.ended and self._reconnect_timer is None:
                self._reconnect_timer = self.loop.call_later(
                    self.settings.reconnect_timeout, self._reconnect_expired
                )

    def _reconnect_expired(self) -> None:
        self._reconnect_timer = None
        if self.link is None and not self.ended:
            self.end(output=RECONNECT_TIMEOUT_MESSAGE)

    def _update_reading(self) -> None:
        if self.link is not None:
            self.link.pause_reading(self._blocked_targets > 0 or bool(self._inbox))

    def receive_frames(self, frames: list[bytes]) -> None:
        """Binary messages from the client, after fault injection (and the service's rate)."""
        if self.ended:
            return
        if self.settings.message_rate is None:
            self._process(frames)
            return
        self._inbox.extend(frames)
        self._drain_inbox()

    def _drain_inbox(self) -> None:
        """Pass on the client's stream data at the service's rate; hold the rest (and stop
        reading the websocket) until tokens accrue. Acks and flags are not counted."""
        if self._inbox_timer is not None:
            self._inbox_timer.cancel()
            self._inbox_timer = None
        if self.ended:
            return
        rate = self.settings.message_rate
        assert rate is not None
        now = self.loop.time()
        self._tokens = min(
            float(self.settings.message_burst), self._tokens + (now - self._tokens_at) * rate
        )
        self._tokens_at = now
        inbox = self._inbox
        batch: list[bytes] = []
        while inbox:
            if message_type_of(inbox[0]) == "input_stream_data":
                if self._tokens < 1.0:
                    break
                self._tokens -= 1.0
            batch.append(inbox.popleft())
        if batch:
            self._process(batch)
        if inbox and not self.ended:
            self._inbox_timer = self.loop.call_later((1.0 - self._tokens) / rate, self._drain_inbox)
        self._update_reading()

    def _process(self, frames: list[bytes]) -> None:
        now = self.loop.time()
        for frame in frames:
            self.stats["frames_in"] += 1
            try:
                events = self.conn.receive(frame, now)
            except messages.ProtocolError as exc:
                log.warning("session %s: dropped a malformed message: %s", self.session_id, exc)
                continue
            for event in events:
                self._handle(event)
                if self.ended:
                    return
        self._schedule_flush()

    def _handle(self, event: Any) -> None:
        ev = channel_module
        if isinstance(event, ev.DataReceived):
            self._touch()
            self.stats["bytes_to_target"] += len(event.data)
            if self.ports is not None:
                self.ports.data_received(event.data)
        elif isinstance(event, ev.FlagReceived):
            self._touch()
            if self.ports is not None:
                self.ports.flag_received(event.flag)
            elif event.flag == Flag.TERMINATE_SESSION:
                self.terminate_from_client()
        elif isinstance(event, ev.HandshakeResponded):
            self.client_version = event.client_version
            if self.conn.handshake_error is not None:
                self.fail(
                    f"Encountered error while initiating handshake. {self.conn.handshake_error}"
                )
        elif isinstance(event, ev.HandshakeCompleted):
            self._start_port_plugin()

    def _start_port_plugin(self) -> None:
        """After HandshakeComplete: choose smux or basic and start it (``port.go``)."""
        if self.ports is not None:
            return
        mux = use_mux(self.agent_version, self.client_version, self.properties.get("type"))
        self.ports = MuxPorts(self) if mux else BasicPort(self)
        if self.settings.ready_delay > 0:
            self._ready_timer = self.loop.call_later(self.settings.ready_delay, self._start_ports)
        else:
            self._start_ports()

    def _start_ports(self) -> None:
        self._ready_timer = None
        if self.ports is not None and not self.ended:
            self.ports.start()

    # -- called by the port side -----------------------------------------------------------
    def resolve_target(self) -> tuple[str, int]:
        return self.resolver(self.remote_port)

    def set_ready(self) -> None:
        """The port side takes data now: acknowledge and deliver from here on."""
        self.ready = True
        self.conn.set_ready(True)
        self._schedule_flush()

    def output_ready(self) -> None:
        self._schedule_flush()

    def target_blocked(self, blocked: bool) -> None:
        """A target socket's write buffer filled up (or drained): stop (resume) reading the
        websocket, so that what the client sends waits in TCP buffers, not here."""
        self._blocked_targets += 1 if blocked else -1
        self._update_reading()

    def send_flag(self, flag: Flag) -> None:
        self._flush_output()  # keep the byte stream's order ahead of the flag
        self.conn.send_flag(flag, self.loop.time())
        self._schedule_flush()

    def terminate_from_client(self) -> None:
        """TerminateSession flag: the plugin is cancelled and the session completes."""
        self.end(output="")

    def fail(self, output: str) -> None:
        """The port plugin failed (basic mode's dial): the session ends with that output."""
        self.end(output=output, failed=True)

    # -- ending ------------------------------------------------------------------------------
    def end(
        self,
        output: str = "",
        *,
        failed: bool = False,
        notify: bool = True,
        abrupt: bool = False,
        code: int = 1000,
    ) -> None:
        """End the session once: close TCP, tell the client (``channel_closed``) and close.

        ``abrupt`` drops the websocket without a close frame (an agent that vanished);
        ``notify=False`` skips the owner's callback (the owner is the one ending it).
        """
        if self.ended:
            return
        self._flush()
        self.ended = True
        for timer in (
            self._timer,
            self._idle_timer,
            self._ready_timer,
            self._reconnect_timer,
            self._inbox_timer,
        ):
            if timer is not None:
                timer.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self.ports is not None:
            self.ports.close()
        link, self.link = self.link, None
        if link is not None:
            if abrupt:
                link.abort()
            else:
                link.send([channel_closed_frame(self.session_id, self.instance_id, output)])
                link.close(code, "")
        if notify:
            self._on_end(output, failed)

    # -- idle timeout ------------------------------------------------------------------------
    def _touch(self) -> None:
        self.last_activity = self.loop.time()

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        due = self.last_activity + self.settings.idle_timeout
        self._idle_timer = self.loop.call_at(due, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self.ended:
            return
        if self.loop.time() - self.last_activity >= self.settings.idle_timeout - 1e-3:
            self.end(output=IDLE_TIMEOUT_MESSAGE)
        else:
            self._arm_idle_timer()

    def expire_idle(self) -> None:
        """Act as if the idle timeout had just passed (tests need not wait 20 minutes)."""
        if not self.ended:
            self.end(output=IDLE_TIMEOUT_MESSAGE)

    def set_idle_timeout(self, seconds: float) -> None:
        self.settings.idle_timeout = seconds
        if not self.ended:
            self._arm_idle_timer()

    # -- flushing ----------------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if self._flush_handle is None and not self.ended:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush_output(self) -> None:
        if self.ports is None:
            return
        data = self.ports.output()
        if data:
            self._touch()
            self.conn.send_data(data, self.loop.time())

    def _flush(self) -> None:
        """Move pending output into the channel and the channel's frames to the client."""
        self._flush_handle = None
        if self.ended:
            return
        self._flush_output()
        frames = self.conn.frames_to_send()
        if frames:
            self.stats["frames_out"] += len(frames)
            if self.link is not None:
                self.link.send(frames)
        self._rearm_timer()
        self._apply_backpressure()

    def _rearm_timer(self) -> None:
        deadline = self.conn.next_deadline()
        if deadline is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(max(deadline, self.loop.time() + 0.001), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.ended:
            return
        for event in self.conn.tick(self.loop.time()):
            if isinstance(event, channel_module.GaveUp) and not self.conn.handshake_complete:
                self.fail(HANDSHAKE_TIMEOUT_MESSAGE)  # datachannel.go PerformHandshake
                return
        self._flush()

    def _apply_backpressure(self) -> None:
        if self.ports is None:
            return
        in_flight = self.conn.resend_buffer_size
        if not self._paused and in_flight >= self.settings.max_in_flight:
            self._paused = True
            self.ports.pause()
        elif self._paused and in_flight <= self.settings.max_in_flight // 2:
            self._paused = False
            self.ports.resume()
