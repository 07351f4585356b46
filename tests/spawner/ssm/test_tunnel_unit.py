"""The asyncio layers of the SSM tunnel: `DataChannel`, `Tunnel` and ``snh forward``.

Unit tests drive them against fakes: a boto3-shaped SSM client that records its calls, an
in-memory websocket whose far end is the AGENT role of `ChannelConnection`, and a fake data
channel whose far end is an smux server. The last tests go end to end through the local SSM
stand-in (``localcloud.ssm``) to a TCP echo server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import pytest
import tornado.httpclient
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError

from localcloud.ssm import fixed_resolver, serve, shutdown
from localcloud.ssm.sigv4 import StaticCredentials
from spawner.ssm import datachannel as dc_module
from spawner.ssm import smux as smux_module
from spawner.ssm.channel import ChannelConnection, DataReceived, FlagReceived, Role
from spawner.ssm.datachannel import DataChannel, SessionError
from spawner.ssm.messages import ClientMessage, Flag, MessageType, channel_closed_payload, encode
from spawner.ssm.metrics import TunnelMetrics
from spawner.ssm.smux import Nop, SmuxSession, StreamData, StreamEnded, StreamOpened
from spawner.ssm.tunnel import Tunnel, TunnelSettings, backoff_delay
from tests.polling import until

INSTANCE = "i-0123456789abcdef0"
NEW_AGENT = "3.3.1142.0"  # smux, no client keep-alive needed
OLD_MUX_AGENT = "3.1.1511.0"  # smux, client keep-alive needed
BASIC_AGENT = "3.0.196.0"  # no smux
PROPERTIES = {"localPortNumber": "0", "portNumber": "8888", "type": "LocalPortForwarding"}


# --- fakes ----------------------------------------------------------------------------------


class FakeSSM:
    """The two boto3 calls a DataChannel makes, recorded with the thread they ran on."""

    def __init__(self, errors: list[Exception] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.threads: list[threading.Thread] = []
        self.errors = list(errors or [])
        self.started = 0
        self.resume_answers: list[Any] = []

    def start_session(self, **kwargs: Any) -> dict[str, str]:
        self.calls.append(("StartSession", kwargs))
        self.threads.append(threading.current_thread())
        if self.errors:
            raise self.errors.pop(0)
        self.started += 1
        n = self.started
        return {
            "SessionId": f"hub-0000000000000000{n}",
            "TokenValue": f"token-{n}",
            "StreamUrl": f"wss://ssmmessages.test/v1/data-channel/hub-{n}?role=publish_subscribe",
        }

    def terminate_session(self, **kwargs: Any) -> dict[str, str]:
        self.calls.append(("TerminateSession", kwargs))
        self.threads.append(threading.current_thread())
        return {"SessionId": kwargs["SessionId"]}

    def resume_session(self, **kwargs: Any) -> dict[str, str]:
        """A new token for the same session, or the next scripted answer (dict or error)."""
        self.calls.append(("ResumeSession", kwargs))
        self.threads.append(threading.current_thread())
        if self.resume_answers:
            answer = self.resume_answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        session = kwargs["SessionId"]
        n = session.rsplit("0", 1)[-1]
        return {
            "SessionId": session,
            "TokenValue": f"resumed-{len(self.resumed())}",
            "StreamUrl": f"wss://ssmmessages.test/v1/data-channel/hub-{n}?role=publish_subscribe",
        }

    def terminated(self) -> list[str]:
        return [kw["SessionId"] for name, kw in self.calls if name == "TerminateSession"]

    def resumed(self) -> list[str]:
        return [kw["SessionId"] for name, kw in self.calls if name == "ResumeSession"]


class FakeAgent:
    """An in-memory websocket whose other end is an SSM agent (the channel's AGENT role)."""

    def __init__(
        self,
        *,
        agent_version: str = NEW_AGENT,
        handshake: bool = True,
        deliver: bool = True,
        properties: dict[str, str] | None = None,
        resumes: FakeAgent | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        if resumes is not None:  # a new websocket of the same session: same agent state
            self.agent = resumes.agent
            self.data = resumes.data
            self.flags = resumes.flags
        else:
            self.agent = ChannelConnection(
                Role.AGENT,
                now=self.loop.time(),
                agent_version=agent_version,
                properties=PROPERTIES if properties is None else properties,
                epoch_offset=time.time() - self.loop.time(),
            )
            self.agent.set_ready(True)
            self.data = bytearray()  # Output bytes the agent received
            self.flags: list[Flag] = []
        self.resumed = resumes is not None
        self.handshake = handshake
        self.deliver = deliver  # False: a black hole, nothing is acknowledged
        self.sent: list[tuple[str, Any]] = []  # what the client sent, in order
        self.held: list[bytes] = []
        self.on_message: Callable[[bytes | str], Any] | None = None
        self.results: list[Any] = []  # what on_message returned
        self._closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.client_closed = False

    # the WebSocket protocol
    def start(self, on_message: Callable[[bytes | str], Any]) -> None:
        self.on_message = on_message

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def send_text(self, text: str) -> None:
        self.sent.append(("text", text))
        if self.resumed:  # the agent resends what the lost websocket may have lost
            self.agent.resend_all(self.loop.time())
            self.loop.call_soon(self.pump)
        elif self.handshake:
            self.loop.call_soon(self._begin)

    def send_frames(self, frames: list[bytes]) -> None:
        self.sent.extend(("binary", f) for f in frames)
        if self.deliver:
            self.feed(frames)
        else:
            self.held.extend(frames)

    def close(self) -> None:
        self.client_closed = True
        self._closed.set()

    # the agent's side
    def _begin(self) -> None:
        self.agent.start_handshake(self.loop.time())
        self.pump()

    def feed(self, frames: list[bytes]) -> None:
        now = self.loop.time()
        for frame in frames:
            for event in self.agent.receive(frame, now):
                if isinstance(event, DataReceived):
                    self.data += event.data
                elif isinstance(event, FlagReceived):
                    self.flags.append(event.flag)
        self.pump()

    def release(self) -> None:
        frames, self.held = self.held, []
        self.deliver = True
        self.feed(frames)

    def pump(self) -> None:
        for frame in self.agent.frames_to_send():
            self.deliver_raw(frame)

    def deliver_raw(self, frame: bytes) -> None:
        def deliver() -> None:
            if not self._closed.is_set() and self.on_message is not None:
                self.results.append(self.on_message(frame))

        self.loop.call_soon(deliver)

    def send(self, data: bytes) -> None:
        self.agent.send_data(data, self.loop.time())
        self.pump()

    def send_flag(self, flag: Flag) -> None:
        self.agent.send_flag(flag, self.loop.time())
        self.pump()

    def server_close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code, self.close_reason = code, reason
        self._closed.set()

    def data_frames(self) -> int:
        return sum(1 for kind, _ in self.sent if kind == "binary")


class AgentConnector:
    """A `WebSocketConnector` handing out FakeAgents and recording the URLs it was given."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.refuse = 0  # upgrades to answer with HTTP 403
        self.urls: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.agents: list[FakeAgent] = []

    async def __call__(self, url: str, headers: Any = None) -> FakeAgent:
        self.urls.append(url)
        self.headers.append(dict(headers or {}))
        earlier = [a for a, u in zip(self.agents, self.urls, strict=False) if u == url]
        if self.refuse:
            self.refuse -= 1
            raise tornado.httpclient.HTTPClientError(403, "Forbidden")
        agent = FakeAgent(**self.options, resumes=earlier[-1] if earlier else None)
        self.agents.append(agent)
        return agent


class Listener:
    def __init__(self) -> None:
        self.data = bytearray()
        self.flags: list[Flag] = []
        self.pauses: list[str] = []

    def data_received(self, data: bytes) -> None:
        self.data += data

    def flag_received(self, flag: Flag) -> None:
        self.flags.append(flag)

    def pause_writing(self) -> None:
        self.pauses.append("pause")

    def resume_writing(self) -> None:
        self.pauses.append("resume")


def make_dc(ssm: FakeSSM, connector: AgentConnector, **options: Any) -> DataChannel:
    options.setdefault("handshake_timeout", 2.0)
    return DataChannel(ssm, INSTANCE, 8888, connector=connector, **options)


# --- DataChannel ----------------------------------------------------------------------------


async def test_open_starts_session_off_loop_then_token_frame_first() -> None:
    ssm, connector = FakeSSM(), AgentConnector()
    dc = make_dc(ssm, connector)
    await dc.open()

    assert ssm.calls == [
        (
            "StartSession",
            {
                "Target": INSTANCE,
                "DocumentName": "AWS-StartPortForwardingSession",
                "Parameters": {"portNumber": ["8888"], "localPortNumber": ["0"]},
            },
        )
    ]
    assert ssm.threads[0] is not threading.main_thread()
    assert connector.urls == ["wss://ssmmessages.test/v1/data-channel/hub-1?role=publish_subscribe"]
    agent = connector.agents[0]
    kind, text = agent.sent[0]
    assert kind == "text"
    token = json.loads(text)
    assert list(token) == [
        "MessageSchemaVersion",
        "RequestId",
        "TokenValue",
        "ClientId",
        "ClientVersion",
    ]
    assert token["TokenValue"] == "token-1"
    assert token["MessageSchemaVersion"] == "1.0"
    assert all(kind == "binary" for kind, _ in agent.sent[1:])
    assert dc.session_id == "hub-00000000000000001"
    assert dc.agent_version == NEW_AGENT
    await dc.close()


async def test_bytes_flow_both_ways_after_handshake() -> None:
    ssm, connector = FakeSSM(), AgentConnector()
    dc = make_dc(ssm, connector)
    await dc.open()
    listener = Listener()
    dc.set_listener(listener)
    agent = connector.agents[0]

    dc.write(b"hello ")
    dc.write(b"agent")
    await until(lambda: bytes(agent.data) == b"hello agent")
    agent.send(b"x" * 5000)  # five Output messages
    await until(lambda: len(listener.data) == 5000)
    dc.send_flag(Flag.DISCONNECT_TO_PORT)
    await until(lambda: agent.flags == [Flag.DISCONNECT_TO_PORT])
    await dc.close()


async def test_retransmission_runs_on_a_timer_without_spinning(monkeypatch) -> None:
    ticks = 0
    original = DataChannel._on_timer

    def counting(self: DataChannel) -> None:
        nonlocal ticks
        ticks += 1
        original(self)

    monkeypatch.setattr(DataChannel, "_on_timer", counting)
    ssm, connector = FakeSSM(), AgentConnector()
    dc = make_dc(ssm, connector)
    await dc.open()
    agent = connector.agents[0]
    agent.deliver = False  # from now on nothing reaches the agent, nothing is acked
    before = agent.data_frames()
    dc.write(b"lost")
    await asyncio.sleep(0.6)
    resent = agent.data_frames() - before - 1
    assert resent >= 2, "the unacknowledged message was not retransmitted"
    assert ticks <= 10, f"{ticks} timer wake-ups in 0.6 s"
    agent.release()  # the copies arrive: delivered once
    await until(lambda: bytes(agent.data) == b"lost")
    await asyncio.sleep(0.3)
    assert bytes(agent.data) == b"lost"
    assert dc.in_flight == 0
    await dc.close()


async def test_full_resend_buffer_pauses_the_layer_above_until_acks_drain() -> None:
    ssm, connector = FakeSSM(), AgentConnector()
    dc = make_dc(ssm, connector, max_unacked=8)
    await dc.open()
    listener = Listener()
    dc.set_listener(listener)
    agent = connector.agents[0]
    agent.deliver = False
    dc.write(b"y" * 10 * 1024)
    await until(lambda: listener.pauses == ["pause"])
    assert not dc.writable
    agent.release()
    await until(lambda: listener.pauses == ["pause", "resume"])
    assert dc.writable
    await until(lambda: len(agent.data) == 10 * 1024)
    await dc.close()


async def test_pause_reading_holds_the_websocket_until_resumed() -> None:
    ssm, connector = FakeSSM(), AgentConnector()
    dc = make_dc(ssm, connector)
    await dc.open()
    dc.set_listener(Listener())
    agent = connector.agents[0]
    dc.pause_reading()
    seen = len(agent.results)
    agent.send(b"a")
    await until(lambda: len(agent.results) > seen)
    gate = agent.results[-1]
    assert isinstance(gate, asyncio.Future) and not gate.done()
    dc.resume_reading()
    assert gate.done()
    await dc.close()


async def test_close_sends_terminate_flag_and_calls_terminate_session() -> None:
    ssm, connector = FakeSSM(), AgentConnector()
    dc = make_dc(ssm, connector)
    await dc.open()
    agent = connector.agents[0]
    await dc.close("done")
    assert agent.flags == [Flag.TERMINATE_SESSION]
    assert agent.client_closed
    assert ssm.terminated() == [dc.session_id]
    assert ssm.threads[-1] is not threading.main_thread()
    assert await dc.wait_closed() == "done"


async def test_channel_closed_ends_the_session_without_terminate_call() -> None:
    ssm, connector = FakeSSM(), AgentConnector()
    dc = make_dc(ssm, connector)
    await dc.open()
    agent = connector.agents[0]
    message = ClientMessage(
        message_type=MessageType.CHANNEL_CLOSED.value,
        sequence_number=0,
        flags=3,
        message_id=uuid.uuid4(),
        payload_type=0,
        payload=channel_closed_payload(dc.session_id or "", "idle timeout"),
        created_date=int(time.time() * 1000),
    )
    agent.deliver_raw(encode(message))
    reason = await asyncio.wait_for(dc.wait_closed(), 2)
    assert reason == "channel_closed: idle timeout"
    assert ssm.terminated() == []


async def test_lost_websocket_resumes_the_session_and_loses_no_byte() -> None:
    """sessionhandler.go ResumeSessionHandler, streaming.go Reconnect: on a lost websocket
    the client calls ResumeSession, dials the same StreamUrl (signed again), sends the token
    frame with the new token and the same ClientId, and carries on with the same sequence
    numbers; messages the old websocket lost in either direction arrive once, in order."""
    keys = iter([("AKIDFIRST", "s1", None), ("ASIAROTATED", "s2", "tok2")])

    def rotating() -> ReadOnlyCredentials:
        return ReadOnlyCredentials(*next(keys))

    ssm, connector = FakeSSM(), AgentConnector()
    metrics = TunnelMetrics()
    dc = make_dc(ssm, connector, credentials=rotating, region="eu-west-1", metrics=metrics)
    await dc.open()
    listener = Listener()
    dc.set_listener(listener)
    first = connector.agents[0]
    first.deliver = False  # what the client sends now is lost with the websocket
    dc.write(b"lost-upstream ")
    await until(lambda: first.held)
    first.on_message = None  # ... and so is what the agent sends
    first.send(b"lost-downstream ")
    first.server_close(1006)

    await until(lambda: len(connector.agents) == 2)
    again = connector.agents[1]
    assert ssm.resumed() == [dc.session_id]
    assert connector.urls[1] == connector.urls[0]
    assert ssm.threads[-1] is not threading.main_thread()
    kind, text = again.sent[0]
    token = json.loads(text)
    assert kind == "text" and token["TokenValue"] == "resumed-1"
    assert token["ClientId"] == json.loads(first.sent[0][1])["ClientId"]
    # each upgrade signed with the credentials of its moment: rotated ones for the resume
    assert "Credential=AKIDFIRST/" in connector.headers[0]["Authorization"]
    assert "Credential=ASIAROTATED/" in connector.headers[1]["Authorization"]
    assert "/eu-west-1/ssmmessages/aws4_request" in connector.headers[1]["Authorization"]
    assert connector.headers[1]["X-Amz-Security-Token"] == "tok2"

    dc.write(b"after")
    again.send(b"after")
    await until(lambda: bytes(again.data) == b"lost-upstream after")
    await until(lambda: bytes(listener.data) == b"lost-downstream after")
    assert not dc.closed and ssm.terminated() == []
    assert metrics.resumes == 1 and metrics.last_resume_seconds is not None
    await dc.close()


async def test_resume_refused_ends_the_session() -> None:
    """An answer without a token (the plugin's "timed out") or a 4xx ends the session; only
    then does the owner open a new one. A session the service ended is not terminated again,
    one refused for another reason is."""
    ended = {"SessionId": "hub-00000000000000001"}
    denied = ClientError(
        {
            "Error": {"Code": "AccessDeniedException", "Message": "not allowed"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        "ResumeSession",
    )
    for answer, terminated in ((ended, False), (denied, True)):
        ssm, connector = FakeSSM(), AgentConnector()
        ssm.resume_answers.append(answer)
        metrics = TunnelMetrics()
        dc = make_dc(ssm, connector, metrics=metrics)
        await dc.open()
        connector.agents[0].server_close(1006)
        reason = await asyncio.wait_for(dc.wait_closed(), 5)
        assert reason.startswith("resume failed: ") and "websocket closed (code 1006" in reason
        assert metrics.resume_failures == 1 and metrics.resumes == 0
        if terminated:
            await until(lambda ssm=ssm, dc=dc: ssm.terminated() == [dc.session_id])
        else:
            await asyncio.sleep(0.05)
            assert ssm.terminated() == []


async def test_resume_retries_transient_errors_then_gives_up_in_time() -> None:
    """Throttling, 5xx and network errors are retried with backoff; a resume that has not
    succeeded within ``resume_timeout`` ends the session (the plugin would wait for ever)."""
    busy = ClientError(
        {
            "Error": {"Code": "InternalServerError", "Message": "try again"},
            "ResponseMetadata": {"HTTPStatusCode": 500},
        },
        "ResumeSession",
    )
    ssm, connector = FakeSSM(), AgentConnector()
    ssm.resume_answers.extend([busy, busy])
    dc = make_dc(ssm, connector)
    await dc.open()
    connector.agents[0].server_close(1006)
    await until(lambda: len(connector.agents) == 2)
    assert len(ssm.resumed()) == 3 and not dc.closed
    await dc.close()

    ssm, connector = FakeSSM(), AgentConnector()
    ssm.resume_answers.extend([busy] * 100)
    dc = make_dc(ssm, connector, resume_timeout=0.5)
    await dc.open()
    connector.agents[0].server_close(1006)
    reason = await asyncio.wait_for(dc.wait_closed(), 5)
    assert reason.startswith("resume failed: InternalServerError: try again")


async def test_forbidden_upgrade_names_the_missing_permission() -> None:
    """websocketchannel.go Open: the service answers an upgrade it does not accept with HTTP
    403; the error says which permission and which signature the caller needs."""
    ssm, connector = FakeSSM(), AgentConnector()
    connector.refuse = 1
    dc = make_dc(ssm, connector)
    with pytest.raises(SessionError) as info:
        await dc.open()
    assert info.value.call == "websocket connect"
    assert info.value.code == "AccessDeniedException"
    assert "ssmmessages:OpenDataChannel" in str(info.value) and "SigV4" in str(info.value)
    await until(lambda: ssm.terminated() == ["hub-00000000000000001"])


async def test_presigned_stream_url_is_dialled_unsigned() -> None:
    """websocketchannel.go isPresignedURL: a URL carrying X-Amz-* query parameters is not
    signed again."""

    class PresignedSSM(FakeSSM):
        def start_session(self, **kwargs: Any) -> dict[str, str]:
            answer = super().start_session(**kwargs)
            answer["StreamUrl"] += "&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc"
            return answer

    ssm, connector = PresignedSSM(), AgentConnector()
    creds = ReadOnlyCredentials("AKIDEXAMPLE", "secret", None)
    dc = make_dc(ssm, connector, credentials=lambda: creds, region="us-east-1")
    await dc.open()
    assert connector.headers == [{}]
    await dc.close()


async def test_start_session_error_names_the_call() -> None:
    error = ClientError(
        {"Error": {"Code": "TargetNotConnected", "Message": f"{INSTANCE} is not connected."}},
        "StartSession",
    )
    dc = make_dc(FakeSSM([error]), AgentConnector())
    with pytest.raises(SessionError) as info:
        await dc.open()
    assert info.value.call == "StartSession"
    assert info.value.code == "TargetNotConnected"
    assert (
        str(info.value) == f"StartSession failed: TargetNotConnected: {INSTANCE} is not connected."
    )


async def test_handshake_timeout_terminates_the_started_session() -> None:
    ssm, connector = FakeSSM(), AgentConnector(handshake=False)
    dc = make_dc(ssm, connector, handshake_timeout=0.2)
    with pytest.raises(SessionError) as info:
        await dc.open()
    assert info.value.call == "handshake"
    await until(lambda: ssm.terminated() == ["hub-00000000000000001"])
    assert connector.agents[0].client_closed


async def test_cancelled_open_terminates_the_session_started_meanwhile() -> None:
    release = threading.Event()

    class SlowSSM(FakeSSM):
        def start_session(self, **kwargs: Any) -> dict[str, str]:
            release.wait(5)
            return super().start_session(**kwargs)

    ssm = SlowSSM()
    dc = make_dc(ssm, AgentConnector())
    opening = asyncio.ensure_future(dc.open())
    await asyncio.sleep(0.05)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    release.set()
    await until(lambda: ssm.terminated() == ["hub-00000000000000001"])


# --- Tunnel with a fake data channel ----------------------------------------------------------


class FakeChannel:
    """A `DataChannel` stand-in whose far end is an smux server the test drives."""

    def __init__(self, session_id: str, agent_version: str, outcome: Any) -> None:
        self.session_id = session_id
        self.agent_version = agent_version
        self.outcome = outcome
        self.listener: Any = None
        self.written = bytearray()
        self.flags: list[Flag] = []
        self.server = SmuxSession(client=False)
        self.seen = 0
        self.events: list[Any] = []
        self.closed = False
        self.writable = True
        self.terminated = False
        self.read_paused = False
        self.resuming = False
        self.session_properties = dict(PROPERTIES)
        self._closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def open(self) -> None:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        if isinstance(self.outcome, asyncio.Event):
            await self.outcome.wait()

    def set_listener(self, listener: Any) -> None:
        self.listener = listener

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.written += data

    def send_flag(self, flag: Flag) -> None:
        self.flags.append(flag)

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        self.read_paused = False

    async def wait_closed(self) -> str:
        return await asyncio.shield(self._closed)

    async def close(self, reason: str = "closed", *, terminate: bool = True) -> None:
        self.terminated = self.terminated or terminate
        self.end(reason)

    def end(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self._closed.set_result(reason)

    # the agent's smux server
    def smux_events(self) -> list[Any]:
        new = bytes(self.written[self.seen :])
        self.seen = len(self.written)
        self.events += self.server.receive(new)
        return self.events

    def stream_data(self, sid: int) -> bytes:
        self.smux_events()
        return b"".join(
            e.data for e in self.events if isinstance(e, StreamData) and e.stream_id == sid
        )

    def reply(self, sid: int, data: bytes = b"", *, fin: bool = False) -> None:
        if data:
            self.server.send(sid, data)
        if fin:
            self.server.close_stream(sid)
        self.listener.data_received(self.server.data_to_send())


class Script:
    """A datachannel_factory: each new channel takes the next outcome (default: it opens)."""

    def __init__(self, *outcomes: Any, agent_version: str = NEW_AGENT) -> None:
        self.outcomes = list(outcomes)
        self.agent_version = agent_version
        self.made: list[FakeChannel] = []

    def __call__(self) -> FakeChannel:
        outcome = self.outcomes.pop(0) if self.outcomes else None
        channel = FakeChannel(f"s-{len(self.made) + 1}", self.agent_version, outcome)
        self.made.append(channel)
        return channel

    @property
    def current(self) -> FakeChannel:
        return self.made[-1]


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def make_tunnel(script: Script, **options: Any) -> Tunnel:
    """A tunnel over scripted channels; one session unless a test asks for more. The
    options are `TunnelSettings` fields and `Tunnel`'s own keyword arguments, mixed."""
    options.setdefault("max_sessions", 1)
    options.setdefault("sleep", Sleeps())
    options.setdefault("rng", lambda: 0.0)
    names = {f.name for f in dataclasses.fields(TunnelSettings)}
    settings = TunnelSettings(**{k: v for k, v in options.items() if k in names})
    rest = {k: v for k, v in options.items() if k not in names}
    return Tunnel(INSTANCE, 8888, settings, datachannel_factory=script, **rest)


_writers: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
async def _close_client_sockets():
    yield
    writers = list(_writers)
    _writers.clear()
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def connect(tunnel: Tunnel) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.local_port)
    _writers.append(writer)
    return reader, writer


def test_backoff_schedule_is_exponential_capped_and_jittered() -> None:
    delays = [backoff_delay(n, initial=0.5, cap=10.0, rng=lambda: 0.0) for n in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    jittered = [backoff_delay(n, initial=0.5, cap=10.0, rng=lambda: 1.0) for n in range(3)]
    assert jittered == [0.25, 0.5, 1.0]


async def test_supervisor_backs_off_then_reconnects_on_the_same_port() -> None:
    transient = ConnectionError("network unreachable")
    script = Script(transient, transient, transient)
    sleeps = Sleeps()
    tunnel = make_tunnel(script, sleep=sleeps, backoff_initial=0.5, backoff_max=1.5)
    await tunnel.start()
    port = tunnel.local_port
    assert sleeps.delays == [0.5, 1.0, 1.5]
    assert tunnel.session_id == "s-4"
    assert tunnel.mode == "smux"

    script.current.end("channel_closed")
    session = await tunnel.wait_for_session(newer_than="s-4", timeout=2)
    assert session == "s-5"
    assert tunnel.local_port == port
    assert sleeps.delays[-1] == 1.5  # the short-lived session did not reset the backoff
    reader, writer = await connect(tunnel)
    writer.write(b"ping")
    await until(lambda: script.current.stream_data(3) == b"ping")
    script.current.reply(3, b"pong")
    assert await reader.readexactly(4) == b"pong"

    m = tunnel.metrics
    assert (m.sessions_opened, m.reconnects, m.session_failures) == (2, 1, 3)
    assert m.last_end_reason == "channel_closed"
    writer.close()
    await tunnel.stop()


async def test_start_reports_a_fatal_error_at_once_and_releases_the_port() -> None:
    fatal = SessionError("StartSession", "AccessDeniedException: no", code="AccessDeniedException")
    tunnel = make_tunnel(Script(fatal))
    with pytest.raises(SessionError, match="AccessDeniedException"):
        await tunnel.start()
    with pytest.raises(OSError):
        await connect(tunnel)


async def test_in_flight_connections_are_reset_when_the_session_ends() -> None:
    script = Script(None, asyncio.Event())  # the second session never comes up
    tunnel = make_tunnel(script)
    await tunnel.start()
    reader, writer = await connect(tunnel)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    await until(lambda: script.current.stream_data(3))
    script.current.end("websocket closed (code 1006)")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(100), 2)
    assert tunnel.metrics.connections_reset == 1
    assert tunnel.metrics.streams_open == 0
    await tunnel.stop()


async def test_new_connections_wait_for_the_next_session() -> None:
    gate = asyncio.Event()
    script = Script(None, gate)
    tunnel = make_tunnel(script)
    await tunnel.start()
    script.current.end("idle timeout")
    await until(lambda: len(script.made) == 2)
    reader, writer = await connect(tunnel)
    writer.write(b"early bird")
    await asyncio.sleep(0.05)
    assert script.current.written == b""  # parked: nothing read while no session is up
    gate.set()
    await until(lambda: script.current.stream_data(3) == b"early bird")
    script.current.reply(3, b"worm", fin=True)
    assert await reader.read() == b"worm"
    writer.close()
    await tunnel.stop()


async def test_waiting_connections_are_reset_after_the_wait_timeout() -> None:
    script = Script(None, asyncio.Event())
    tunnel = make_tunnel(script, wait_timeout=0.1)
    await tunnel.start()
    script.current.end("agent restart")
    reader, _writer = await connect(tunnel)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(100), 2)
    await tunnel.stop()


def resting(tunnel: Tunnel) -> bool:
    """No session, and the supervisor waits for a connection before it opens one."""
    demand = tunnel._demand
    return (
        tunnel.metrics.sessions_open == 0
        and demand is not None
        and not demand.is_set()
        and not tunnel.connected
    )


async def test_an_idle_first_session_is_let_go_and_the_next_connection_opens_one() -> None:
    """``idle_release``: a tunnel nobody uses holds no session (thousands of idle servers,
    no keep-alives); the next connection waits for a new one; a session carrying a
    connection is kept however long it lasts."""
    script = Script()
    tunnel = make_tunnel(script, idle_release=0.2)
    await tunnel.start()
    first = script.current
    await until(lambda: first.closed and resting(tunnel))
    assert first.terminated  # TerminateSession: the service frees it at once
    assert len(script.made) == 1
    reader, writer = await connect(tunnel)
    writer.write(b"hello")
    await until(lambda: len(script.made) == 2 and script.current.stream_data(3) == b"hello")
    assert tunnel.connected and tunnel._primary is not None
    assert tunnel._primary.idle_timer is None  # carrying a connection: not released
    script.current.reply(3, b"again", fin=True)
    assert await asyncio.wait_for(reader.read(), 10) == b"again"
    writer.close()
    await until(lambda: script.made[1].closed and resting(tunnel))
    assert tunnel.metrics.connections_reset == 0
    assert tunnel.metrics.reconnects == 0  # opened on demand: not a recovery
    await tunnel.stop()


async def test_a_session_that_ends_while_idle_is_replaced_only_when_needed() -> None:
    """The service ends idle sessions (20 minutes by default) and stops sessions of a
    stopped instance: with ``idle_release`` an unused tunnel does not reopen them, where
    5,000 servers would otherwise reopen thousands of sessions a timeout later."""
    script = Script(None, ConnectionError("network unreachable"), None)
    tunnel = make_tunnel(script, idle_release=3600)
    await tunnel.start()
    script.current.end("idle timeout")
    await until(lambda: resting(tunnel))
    assert len(script.made) == 1
    # a connection wakes it; a failed attempt is retried while the connection waits
    reader, writer = await connect(tunnel)
    writer.write(b"x")
    await until(lambda: len(script.made) == 3 and script.current.stream_data(3) == b"x")
    assert tunnel.metrics.session_failures == 1
    # a session that ends under a connection is reopened at once, without a new one
    script.current.end("agent restart")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(100), 10)
    await until(lambda: len(script.made) == 4 and tunnel.connected)
    await tunnel.stop()


async def test_failed_reopening_stops_when_nobody_waits_any_more() -> None:
    """An instance stopped behind the hub's back: once the waiting connection has given up,
    the tunnel stops calling StartSession until someone connects again."""
    gone = ConnectionError("TargetNotConnected")
    script = Script(None, *[gone] * 10_000)
    tunnel = make_tunnel(
        script,
        idle_release=3600,
        wait_timeout=0.3,
        sleep=asyncio.sleep,
        backoff_initial=0.05,
        backoff_max=0.05,
    )
    await tunnel.start()
    script.current.end("instance stopping")
    await until(lambda: resting(tunnel))
    reader, _writer = await connect(tunnel)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(100), 10)
    await until(lambda: resting(tunnel))
    made = len(script.made)
    assert made >= 2 and tunnel.metrics.session_failures == made - 1
    await tunnel.stop()


def test_idle_release_must_be_positive() -> None:
    with pytest.raises(ValueError, match="idle_release"):
        TunnelSettings(idle_release=0)


async def test_streams_open_fin_both_ways_and_connect_errors_reset_one_connection() -> None:
    script = Script()
    tunnel = make_tunnel(script)
    await tunnel.start()
    r1, w1 = await connect(tunnel)
    r2, w2 = await connect(tunnel)
    w1.write(b"one")
    w2.write(b"two")
    channel = script.current
    await until(lambda: channel.stream_data(3) == b"one" and channel.stream_data(5) == b"two")
    assert [e.stream_id for e in channel.events if isinstance(e, StreamOpened)] == [3, 5]
    assert tunnel.metrics.streams_open == 2

    # The agent cannot reach the port for stream 3: ConnectToPortError, then FIN.
    channel.listener.flag_received(Flag.CONNECT_TO_PORT_ERROR)
    channel.reply(3, fin=True)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(r1.read(100), 2)

    # Stream 5 carries on; the client's half-close is a FIN, the agent's FIN an EOF.
    channel.reply(5, b"TWO")
    assert await r2.readexactly(3) == b"TWO"
    w2.write_eof()
    await until(
        lambda: any(isinstance(e, StreamEnded) and e.stream_id == 5 for e in channel.smux_events())
    )
    channel.reply(5, b"bye", fin=True)
    assert await r2.read() == b"bye"
    await until(lambda: tunnel.metrics.streams_open == 0)
    m = tunnel.metrics
    assert (m.connections_accepted, m.connections_reset) == (2, 1)
    assert (m.bytes_to_remote, m.bytes_from_remote) == (6, 6)
    await tunnel.stop()


async def test_basic_mode_serves_one_connection_at_a_time() -> None:
    script = Script(agent_version=BASIC_AGENT)
    tunnel = make_tunnel(script)
    await tunnel.start()
    assert tunnel.mode == "basic"
    channel = script.current
    r1, w1 = await connect(tunnel)
    r2, w2 = await connect(tunnel)
    w1.write(b"first")
    w2.write(b"second")
    await until(lambda: channel.written == b"first")
    channel.listener.data_received(b"reply-1")
    assert await r1.readexactly(7) == b"reply-1"
    await asyncio.sleep(0.05)
    assert channel.written == b"first"  # the second connection waits its turn
    w1.close()
    await until(lambda: channel.flags == [Flag.DISCONNECT_TO_PORT])
    await until(lambda: channel.written == b"firstsecond")
    channel.listener.data_received(b"reply-2")
    assert await r2.readexactly(7) == b"reply-2"
    w2.close()
    await tunnel.stop()


async def test_keepalive_nops_only_when_the_agent_needs_them() -> None:
    old = Script(agent_version=OLD_MUX_AGENT)
    tunnel = make_tunnel(old, keepalive_interval=0.03, client_version="1.2.707.0")
    await tunnel.start()
    await until(lambda: any(isinstance(e, Nop) for e in old.current.smux_events()))
    await tunnel.stop()

    new = Script(agent_version=NEW_AGENT)
    tunnel = make_tunnel(new, keepalive_interval=0.03, client_version="1.2.707.0")
    await tunnel.start()
    await asyncio.sleep(0.1)
    assert new.current.written == b""  # idle: nothing at all is sent
    await tunnel.stop()

    # An agent keeps its own keep-alive on for clients up to 1.2.331.0: answer it with NOPs.
    new = Script(agent_version=NEW_AGENT)
    tunnel = make_tunnel(new, keepalive_interval=0.03, client_version="1.2.0.0")
    await tunnel.start()
    await until(lambda: any(isinstance(e, Nop) for e in new.current.smux_events()))
    await tunnel.stop()


async def test_keepalive_timeout_closes_a_silent_session(monkeypatch) -> None:
    """xtaci/smux keepalive with the plugin's configuration: with the keep-alive on (agents up
    to 3.1.1511.0) a session from which nothing arrived for KeepAliveTimeout is closed, and the
    supervisor opens a new one; anything heard from the agent keeps it open."""
    # while the agent speaks (a NOP at least every few keep-alive ticks), no timeout; the
    # timeout is long here so that a loaded machine's slow loop cannot fake a silence
    monkeypatch.setattr(smux_module, "KEEPALIVE_TIMEOUT", 5.0)
    script = Script(agent_version=OLD_MUX_AGENT)
    tunnel = make_tunnel(script, keepalive_interval=0.05)
    await tunnel.start()
    first = script.current
    for _ in range(8):
        server = SmuxSession(client=False)
        server.nop()
        first.listener.data_received(server.data_to_send())
        await asyncio.sleep(0.05)
    assert not first.closed
    monkeypatch.setattr(smux_module, "KEEPALIVE_TIMEOUT", 0.3)
    await until(lambda: first.closed)  # then silence
    assert (await first.wait_closed()).startswith("smux keep-alive timeout")
    await until(lambda: len(script.made) == 2 and tunnel.connected)
    await tunnel.stop()


async def test_smux_only_for_a_local_port_forwarding_document() -> None:
    """portsession.go Initialize and the agent's port.go: multiplexing needs an agent newer
    than 3.0.196.0 *and* a session whose properties say "type": "LocalPortForwarding"; any
    other port document (no type) is basic mode even with a new agent."""
    script = Script(agent_version=NEW_AGENT)
    tunnel = make_tunnel(script)
    original = script.__call__

    def without_type() -> FakeChannel:
        channel = original()
        channel.session_properties = {"portNumber": "8888", "localPortNumber": "0"}
        return channel

    script.__call__ = without_type  # type: ignore[method-assign]
    tunnel._datachannel_factory = without_type
    await tunnel.start()
    assert tunnel.mode == "basic"
    await tunnel.stop()


async def test_connections_spread_over_sessions_opened_on_demand() -> None:
    """One session carries about 1 MB/s on AWS: a connection that finds every session busy
    waits for another one to open (up to ``max_sessions``); beyond that, connections share
    the least loaded session. Extra sessions close after ``extra_session_idle``."""
    script = Script()
    tunnel = make_tunnel(script, max_sessions=3, extra_session_idle=0.2)
    await tunnel.start()
    assert len(script.made) == 1
    writers = []
    for i in range(4):
        _reader, writer = await connect(tunnel)
        writer.write(f"c{i}".encode())
        writers.append(writer)
        await until(lambda i=i: tunnel.metrics.streams_open == i + 1)
    assert len(script.made) == 3 and tunnel.metrics.sessions_open == 3

    def carried() -> list[bytes]:
        return sorted(channel.stream_data(3) + channel.stream_data(5) for channel in script.made)

    await until(lambda: carried() == sorted([b"c0c3", b"c1", b"c2"]))
    assert len(tunnel.sessions) == 3 and tunnel.sessions[0] == tunnel.session_id
    for writer in writers:
        writer.close()
    for channel in script.made:  # the agent ends the streams too
        channel.smux_events()
        for sid in channel.server.stream_ids:
            channel.reply(sid, fin=True)
    await until(lambda: tunnel.metrics.streams_open == 0)
    # the extra sessions close, and the tunnel counts them gone (a loop turn later)
    await until(
        lambda: (
            script.made[1].closed
            and script.made[2].closed
            and tunnel.metrics.sessions_open == 1
            and len(tunnel.sessions) == 1
        )
    )
    assert not script.made[0].closed
    assert script.made[1].terminated
    await tunnel.stop()


async def second_connection_while_a_session_opens(
    spread_wait: float,
) -> tuple[Script, Tunnel, FakeChannel, asyncio.StreamReader]:
    """A connection on the first session, then a second one for which a second session is
    being opened — and never will be. Returns the reader of the second connection."""
    script = Script(None, asyncio.Event())
    tunnel = make_tunnel(script, max_sessions=2, spread_wait=spread_wait)
    await tunnel.start()
    _r1, w1 = await connect(tunnel)
    w1.write(b"one")
    first = script.current
    await until(lambda: first.stream_data(3) == b"one")
    r2, w2 = await connect(tunnel)
    w2.write(b"two")
    await until(lambda: len(script.made) == 2)  # the second session is being opened ...
    return script, tunnel, first, r2


async def test_a_connection_waits_for_a_new_session_only_briefly() -> None:
    """A connection waiting for an extra session that does not come (StartSession throttled,
    say) shares an open one after ``spread_wait`` instead of being reset; and `stop` waits for
    the session still being opened and terminates it."""
    script, tunnel, first, r2 = await second_connection_while_a_session_opens(spread_wait=0.2)
    await until(lambda: first.stream_data(5) == b"two")  # ... but the first takes it
    first.reply(5, b"answer")
    assert await asyncio.wait_for(r2.readexactly(6), 5) == b"answer"
    assert tunnel.metrics.connections_reset == 0
    await tunnel.stop()
    assert script.made[1].terminated  # cancelled mid-open, then terminated


async def test_a_session_that_becomes_idle_takes_a_waiting_connection() -> None:
    _script, tunnel, first, _r2 = await second_connection_while_a_session_opens(spread_wait=30)
    first.reply(3, b"done", fin=True)  # the first connection ends: its session is idle
    await until(lambda: first.stream_data(5) == b"two")
    await tunnel.stop()


async def test_a_slow_reader_pauses_only_its_own_session() -> None:
    """The defect the official client has: one local reader that stops reading stalls every
    connection of the session. Here its bytes wait in its own buffer (bounded), then only its
    session stops being read; the next connection goes to another session and works."""
    script = Script()
    tunnel = make_tunnel(script, max_sessions=2, local_write_limit=64 * 1024)
    await tunnel.start()
    slow_reader, slow = await connect(tunnel)
    slow.write(b"GET /big")
    first = script.current
    await until(lambda: first.stream_data(3) == b"GET /big")
    for _ in range(200):  # 12.8 MB that nobody reads
        first.reply(3, bytes(64 * 1024))
        if first.read_paused:
            break
        await asyncio.sleep(0)
    await until(lambda: first.read_paused)
    reader, writer = await connect(tunnel)
    writer.write(b"ping")
    await until(lambda: len(script.made) == 2)
    second = script.made[1]
    await until(lambda: second.stream_data(3) == b"ping")
    second.reply(3, b"pong")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"pong"
    assert first.read_paused and not second.read_paused
    # once the slow client reads again, its session is read again
    while first.read_paused:
        await asyncio.wait_for(slow_reader.read(1 << 20), 5)
    assert tunnel.metrics.connections_reset == 0
    await tunnel.stop()


async def test_backpressure_pauses_local_reads_while_the_channel_is_full() -> None:
    script = Script()
    tunnel = make_tunnel(script)
    await tunnel.start()
    _reader, writer = await connect(tunnel)
    writer.write(b"a")
    channel = script.current
    await until(lambda: channel.stream_data(3) == b"a")
    channel.listener.pause_writing()
    writer.write(b"b")
    await asyncio.sleep(0.05)
    assert channel.stream_data(3) == b"a"
    channel.listener.resume_writing()
    await until(lambda: channel.stream_data(3) == b"ab")
    writer.close()
    await tunnel.stop()


async def test_stop_terminates_the_session_and_closes_the_port() -> None:
    script = Script()
    tunnel = make_tunnel(script)
    await tunnel.start()
    reader, _writer = await connect(tunnel)
    await until(lambda: tunnel.metrics.streams_open == 1)
    await tunnel.stop()
    assert script.current.terminated
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(100), 2)
    with pytest.raises(OSError):
        await connect(tunnel)


async def test_tunnel_stop_sends_terminate_session_through_the_real_data_channel() -> None:
    ssm, connector = FakeSSM(), AgentConnector()
    tunnel = Tunnel(INSTANCE, 8888, ssm_client=ssm, connector=connector, metrics=TunnelMetrics())
    await tunnel.start()
    reader, writer = await connect(tunnel)
    writer.write(b"through smux")
    agent = connector.agents[0]
    server = SmuxSession(client=False)
    await until(lambda: len(agent.data) >= 8 + 8 + 12)
    events = server.receive(bytes(agent.data))
    assert events[0] == StreamOpened(3)
    assert StreamData(3, b"through smux") in events
    server.send(3, b"answer")
    agent.send(server.data_to_send())
    assert await reader.readexactly(6) == b"answer"
    await tunnel.stop()
    assert agent.flags == [Flag.TERMINATE_SESSION]
    assert ssm.terminated() == ["hub-00000000000000001"]
    assert all(t is not threading.main_thread() for t in ssm.threads)


# --- end to end through the local SSM stand-in ----------------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def ssm_cloud():
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    standin, server, base_url = await serve(credentials=StaticCredentials({"testing": "testing"}))
    standin.register(INSTANCE, fixed_resolver("127.0.0.1", echo.sockets[0].getsockname()[1]))

    def client() -> Any:
        return boto3.client(
            "ssm",
            endpoint_url=base_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    yield standin, base_url, client
    await shutdown(standin, server)
    echo.close()


async def _round_trip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _writers.append(writer)
    writer.write(payload)
    data = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
    writer.close()
    return data


async def test_e2e_round_trip_and_ten_concurrent_connections(ssm_cloud) -> None:
    standin, _base_url, client = ssm_cloud
    async with Tunnel(INSTANCE, 8888, ssm_client_factory=client) as tunnel:
        assert tunnel.mode == "smux"
        payload = os.urandom(200_000)
        assert await _round_trip(tunnel.local_port, payload) == payload
        payloads = [os.urandom(20_000 + i) for i in range(10)]
        results = await asyncio.gather(*(_round_trip(tunnel.local_port, p) for p in payloads))
        assert results == payloads
        assert tunnel.metrics.connections_accepted == 11
        session_id = tunnel.session_id
    assert not standin.sessions[session_id].active  # stop() terminated it


async def test_e2e_dropped_websocket_is_resumed_and_the_connection_survives(ssm_cloud) -> None:
    """A websocket lost under a live session (the stand-in's ``drop``) is resumed: the open
    TCP connection goes on in the same session; nothing is reset or reopened."""
    standin, _base_url, client = ssm_cloud
    async with Tunnel(INSTANCE, 8888, ssm_client_factory=client) as tunnel:
        first = tunnel.session_id
        reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.local_port)
        _writers.append(writer)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        assert standin.drop_connection(first)
        writer.write(b"still here")
        assert await asyncio.wait_for(reader.readexactly(10), 10) == b"still here"
        assert tunnel.session_id == first
        assert tunnel.metrics.resumes == 1 and tunnel.metrics.reconnects == 0
        assert tunnel.metrics.connections_reset == 0
        assert standin.sessions[first].resumes == 1


@pytest.mark.parametrize("end", ["close_session", "expire_idle", "restart_agent"])
async def test_e2e_session_end_resets_in_flight_then_same_port_works(ssm_cloud, end) -> None:
    standin, _base_url, client = ssm_cloud
    tunnel = Tunnel(INSTANCE, 8888, TunnelSettings(backoff_initial=0.05), ssm_client_factory=client)
    await tunnel.start()
    port, first = tunnel.local_port, tunnel.session_id
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _writers.append(writer)
    writer.write(b"x")
    assert await reader.readexactly(1) == b"x"
    if end == "restart_agent":
        standin.restart_agent(INSTANCE)
    else:
        getattr(standin, end)(first)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.readexactly(1), 5)
    second = await tunnel.wait_for_session(newer_than=first, timeout=5)
    assert second != first and tunnel.local_port == port
    assert await _round_trip(port, b"after the reconnect") == b"after the reconnect"
    assert tunnel.metrics.reconnects == 1
    await until(lambda: not standin.sessions[first].active)  # dropped ones are terminated
    await tunnel.stop()


async def test_e2e_basic_mode_with_an_old_agent(ssm_cloud) -> None:
    standin, _base_url, client = ssm_cloud
    resolver = standin.instances.get(INSTANCE).resolver
    standin.register("i-00000000000000001", resolver, agent_version=BASIC_AGENT)
    async with Tunnel("i-00000000000000001", 8888, ssm_client_factory=client) as tunnel:
        assert tunnel.mode == "basic"
        assert await _round_trip(tunnel.local_port, b"one at a time") == b"one at a time"


def _cli_env(base_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        PYTHONPATH=os.getcwd(),
    )
    return env


async def test_e2e_forward_command_prints_one_ready_line_and_stops_on_sigint(ssm_cloud) -> None:
    standin, base_url, _client = ssm_cloud
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "operations", "forward", "--target", INSTANCE,
        "--remote-port", "8888", "--local-port", "0", "--region", "us-east-1",
        "--endpoint-url", base_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_cli_env(base_url),
    )  # fmt: skip
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        match = re.fullmatch(
            rf"Forwarding 127\.0\.0\.1:(\d+) -> {INSTANCE} port 8888 \(session (\S+)\)\n", line
        )
        assert match, line
        port, session_id = int(match.group(1)), match.group(2)
        assert await _round_trip(port, b"via the command") == b"via the command"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert await proc.stdout.read() == b""
        assert not standin.sessions[session_id].active
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_e2e_forward_command_reports_target_not_connected(ssm_cloud) -> None:
    _standin, base_url, _client = ssm_cloud
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "operations", "forward", "--target", "i-0fffffffffffffff0",
        "--remote-port", "8888", "--region", "us-east-1", "--endpoint-url", base_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_cli_env(base_url),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 1
    assert out == b""
    assert err.decode() == (
        "error: StartSession failed: TargetNotConnected: i-0fffffffffffffff0 is not connected.\n"
    )


def test_default_executor_is_shared_and_named() -> None:
    assert dc_module.shared_executor() is dc_module.shared_executor()
