"""The SSM tunnel end to end: hub side (`spawner.ssm.Tunnel`, in this process) → the SSM
stand-in's service and agent (another process) → a notebook-like HTTP + websocket server (a
third process)."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import tornado.escape
import tornado.websocket
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from localcloud.instances.notebook_like import blob
from localcloud.ssm import fixed_resolver
from localcloud.ssm.app import serve, shutdown
from localcloud.ssm.sigv4 import StaticCredentials
from spawner.ssm.datachannel import SessionError
from spawner.ssm.tunnel import Tunnel, TunnelSettings
from tests.polling import until

from .ssm_harness import INSTANCE_ID, ssm_control, start_notebook_like, start_ssm_standin

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def notebook():
    server = start_notebook_like()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ssm(notebook):
    standin = start_ssm_standin(notebook.address)
    yield standin
    standin.stop()


def client() -> AsyncHTTPClient:
    return AsyncHTTPClient(force_instance=True, max_clients=64, max_body_size=1 << 30)


async def test_fifty_concurrent_connections(ssm):
    async with Tunnel(INSTANCE_ID, 8888, endpoint_url=ssm.address) as tunnel:
        http = client()

        async def one(i: int) -> bytes:
            r = await http.fetch(
                f"{tunnel.url}/blob?size={10_000 + i}&seed={i}", request_timeout=60
            )
            return r.body

        bodies = await asyncio.gather(*(one(i) for i in range(50)))
        assert all(body == blob(10_000 + i, i) for i, body in enumerate(bodies))
        http.close()
        # spread over the tunnel's sessions, none lost or reopened
        assert tunnel.metrics.sessions_opened == tunnel.settings.max_sessions
        assert tunnel.metrics.reconnects == 0


async def test_fifty_megabytes_with_matching_sha256(ssm):
    size = 50 * 1024 * 1024
    expected = hashlib.sha256(blob(size, 7)).hexdigest()
    async with Tunnel(INSTANCE_ID, 8888, endpoint_url=ssm.address) as tunnel:
        digest, received = hashlib.sha256(), 0

        def on_chunk(chunk: bytes) -> None:
            nonlocal received
            digest.update(chunk)
            received += len(chunk)

        http = client()
        await http.fetch(
            HTTPRequest(
                f"{tunnel.url}/blob?size={size}&seed=7",
                streaming_callback=on_chunk,
                request_timeout=120,
            )
        )
        upload = blob(size // 5, 8)
        answer = await http.fetch(
            f"{tunnel.url}/sha256", method="POST", body=upload, request_timeout=120
        )
        http.close()
    assert received == size and digest.hexdigest() == expected
    assert tornado.escape.json_decode(answer.body)["sha256"] == hashlib.sha256(upload).hexdigest()


async def test_websocket_across_a_forced_session_end(ssm):
    """The service ends a session (idle timeout, channel_closed): the open websocket fails
    cleanly, the browser-side client reconnects on the same local port, requests succeed."""
    async with Tunnel(
        INSTANCE_ID, 8888, TunnelSettings(backoff_initial=0.05), endpoint_url=ssm.address
    ) as tunnel:
        port, first_session = tunnel.local_port, tunnel.session_id
        ws = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws/echo")
        await ws.write_message("before")
        assert await ws.read_message() == "before"

        ssm_control(ssm, "POST", f"/sessions/{first_session}/idle")
        assert await asyncio.wait_for(ws.read_message(), 10) is None  # closed, not hung

        await tunnel.wait_for_session(newer_than=first_session, timeout=10)
        ws = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws/echo")
        await ws.write_message(b"\x00after" * 1000, binary=True)
        assert await ws.read_message() == b"\x00after" * 1000
        http = client()
        assert (await http.fetch(f"{tunnel.url}/api")).code == 200
        http.close()
        ws.close()
        assert tunnel.local_port == port and tunnel.session_id != first_session
        assert tunnel.metrics.reconnects >= 1 and tunnel.metrics.sessions_opened >= 2


def active_sessions(ssm) -> set[str]:
    state = ssm_control(ssm, "GET", "/state")
    return {r["SessionId"] for r in state["sessions"] if r["Status"] in ("Connected", "Connecting")}


async def test_an_unused_tunnel_holds_no_session_and_the_next_request_opens_one(ssm):
    """``idle_release`` against the stand-in's real service: the unused session is
    terminated (the service lists it no longer active); a session the service ends for
    idleness is not reopened; a request through the same port opens one and is answered."""
    http = client()
    settings = TunnelSettings(backoff_initial=0.05, idle_release=0.5)
    async with Tunnel(INSTANCE_ID, 8888, settings, endpoint_url=ssm.address) as tunnel:
        first = tunnel.session_id
        await until(lambda: first not in active_sessions(ssm) and not tunnel.connected)
        assert (await http.fetch(f"{tunnel.url}/api", request_timeout=30)).code == 200
        assert tunnel.session_id not in (None, first)
    # the service ends an unused session (its idle timeout): nothing reopens it until a
    # request needs one (a release far off, so that the service's end is what is tested)
    settings = TunnelSettings(backoff_initial=0.05, idle_release=3600)
    async with Tunnel(INSTANCE_ID, 8888, settings, endpoint_url=ssm.address) as tunnel:
        session = tunnel.session_id
        assert session in active_sessions(ssm)
        ssm_control(ssm, "POST", f"/sessions/{session}/idle")
        await until(lambda: not tunnel.connected and session not in active_sessions(ssm))
        opened = tunnel.metrics.sessions_opened
        assert (await http.fetch(f"{tunnel.url}/api", request_timeout=30)).code == 200
        assert tunnel.metrics.sessions_opened == opened + 1
    http.close()


async def test_agent_restart_and_dropped_websocket_are_survived(ssm):
    """A dropped websocket is resumed (same session); an agent restart ends the session and
    the supervisor opens a new one on the same port."""
    async with Tunnel(
        INSTANCE_ID, 8888, TunnelSettings(backoff_initial=0.05), endpoint_url=ssm.address
    ) as tunnel:
        http = client()
        session = tunnel.session_id
        ssm_control(ssm, "POST", f"/sessions/{session}/drop")
        assert (await http.fetch(f"{tunnel.url}/small")).body == b"ok"
        assert tunnel.session_id == session and tunnel.metrics.resumes == 1
        ssm_control(ssm, "POST", f"/instances/{INSTANCE_ID}/restart")
        await tunnel.wait_for_session(newer_than=session, timeout=10)
        assert (await http.fetch(f"{tunnel.url}/small")).body == b"ok"
        http.close()


async def _echo_websockets(
    port: int, count: int
) -> list[tornado.websocket.WebSocketClientConnection]:
    sockets = []
    for _ in range(count):
        ws = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws/echo")
        sockets.append(ws)
    return sockets


async def test_download_and_websockets_survive_three_websocket_cuts(ssm):
    """sessionhandler.go / streaming.go: when the data channel's websocket is cut, the client
    resumes the session (ResumeSession, same StreamUrl, new token, same sequence numbers and
    smux session). A 50 MB download and five open websockets (kernel channels, say) go on
    across three cuts: no connection is reset, every byte arrives once and in order, and
    ResumeSession is called three times."""
    size = 50 * 1024 * 1024
    expected = hashlib.sha256(blob(size, 21)).hexdigest()
    # the service's rate (4 MB/s here) keeps the download flowing across all three cuts,
    # however fast the machine
    ssm_control(ssm, "PUT", "/settings", {"messageRate": 4000})
    try:
        await _across_three_cuts(ssm, size, expected)
    finally:
        ssm_control(ssm, "PUT", "/settings", {"messageRate": None})


async def _across_three_cuts(ssm, size: int, expected: str) -> None:
    async with Tunnel(
        INSTANCE_ID, 8888, TunnelSettings(max_sessions=1), endpoint_url=ssm.address
    ) as tunnel:
        session = tunnel.session_id
        sockets = await _echo_websockets(tunnel.local_port, 5)
        digest, received = hashlib.sha256(), 0
        progress = asyncio.Event()

        def on_chunk(chunk: bytes) -> None:
            nonlocal received
            digest.update(chunk)
            received += len(chunk)
            progress.set()

        http = client()
        download = asyncio.ensure_future(
            http.fetch(
                HTTPRequest(
                    f"{tunnel.url}/blob?size={size}&seed=21",
                    streaming_callback=on_chunk,
                    request_timeout=300,
                )
            )
        )
        for cut in range(3):
            # cut while bytes are flowing: after the next chunk has arrived
            progress.clear()
            await asyncio.wait_for(progress.wait(), 60)
            assert not download.done()
            ssm_control(ssm, "POST", f"/sessions/{session}/drop")
            for i, ws in enumerate(sockets):
                message = f"cut {cut} socket {i} " + "x" * (2000 * i)
                await ws.write_message(message)
                assert await asyncio.wait_for(ws.read_message(), 60) == message
        await asyncio.wait_for(download, 300)
        http.close()
        for ws in sockets:
            ws.close()
        assert received == size and digest.hexdigest() == expected
        assert tunnel.session_id == session
        assert tunnel.metrics.resumes == 3 and tunnel.metrics.resume_failures == 0
        assert tunnel.metrics.connections_reset == 0 and tunnel.metrics.reconnects == 0
    state = ssm_control(ssm, "GET", "/state")
    [record] = [s for s in state["sessions"] if s["SessionId"] == session]
    assert record["Resumes"] == 3


async def test_refused_resume_falls_back_to_a_new_session_on_the_same_port(ssm):
    """A resume the service refuses (the session ended while the client was away) ends the
    session; the supervisor then opens a new one on the same local port."""
    ssm_control(ssm, "PUT", "/settings", {"reconnectTimeout": 0.0})  # for sessions from now
    try:
        async with Tunnel(
            INSTANCE_ID,
            8888,
            TunnelSettings(backoff_initial=0.05, max_sessions=1),
            endpoint_url=ssm.address,
        ) as tunnel:
            port, session = tunnel.local_port, tunnel.session_id
            # the websocket is cut and the service ends the session at once: no token
            ssm_control(ssm, "POST", f"/sessions/{session}/drop")
            await tunnel.wait_for_session(newer_than=session, timeout=20)
            http = client()
            assert (await http.fetch(f"{tunnel.url}/small")).body == b"ok"
            http.close()
            assert tunnel.local_port == port and tunnel.metrics.resume_failures == 1
            assert tunnel.metrics.reconnects == 1
    finally:
        ssm_control(ssm, "PUT", "/settings", {"reconnectTimeout": 60.0})


async def test_a_stalled_reader_does_not_stall_its_neighbours(ssm):
    """One connection whose client stops reading (a slow browser tab and a large download)
    must not stop the server's other connections; with the official client (and this one
    before) every connection of the session froze within about a second."""
    async with Tunnel(INSTANCE_ID, 8888, endpoint_url=ssm.address) as tunnel:
        stalled_reader, stalled = await asyncio.open_connection("127.0.0.1", tunnel.local_port)
        stalled.write(b"GET /blob?size=104857600&seed=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(stalled_reader.read(100), 30)).startswith(b"HTTP/1.1 200")
        # ... and then it reads no more. The others go on for 20 s, one request after another.
        http = client()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        done = 0
        while loop.time() < deadline:
            r = await http.fetch(f"{tunnel.url}/blob?size=65536&seed={done}", request_timeout=10)
            assert r.body == blob(65536, done)
            done += 1
        socket_ = await tornado.websocket.websocket_connect(
            f"ws://127.0.0.1:{tunnel.local_port}/ws/echo"
        )
        await socket_.write_message("still here")
        assert await asyncio.wait_for(socket_.read_message(), 10) == "still here"
        socket_.close()
        http.close()
        stalled.close()
        assert done > 20
        assert tunnel.metrics.connections_reset == 0


async def test_refused_target_port_fails_one_stream_while_others_go_on(notebook):
    """port_mux.go: a failed dial is reported with Flag ConnectToPortError and a FIN for that
    stream only; the session and its other streams continue."""
    host, port = notebook.address.split(":")
    target = {"resolver": fixed_resolver(host, int(port))}
    standin, server, url = await serve(0, credentials=StaticCredentials({"testing": "testing"}))
    standin.register(INSTANCE_ID, lambda remote: target["resolver"](remote))
    try:
        async with Tunnel(INSTANCE_ID, 8888, endpoint_url=url) as tunnel:
            size, received = 20 * 1024 * 1024, asyncio.Event()
            digest = hashlib.sha256()

            def on_chunk(chunk: bytes) -> None:
                digest.update(chunk)
                received.set()

            http = client()
            download = asyncio.ensure_future(
                http.fetch(
                    HTTPRequest(
                        f"{tunnel.url}/blob?size={size}&seed=3",
                        streaming_callback=on_chunk,
                        request_timeout=120,
                    )
                )
            )
            await received.wait()

            def refuse(remote_port: int) -> tuple[str, int]:
                raise LookupError("nothing listens there")

            target["resolver"] = refuse
            reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.local_port)
            writer.write(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
            try:  # reset (or closed without an answer), promptly: never a hang
                assert await asyncio.wait_for(reader.read(), 10) == b""
            except ConnectionResetError:
                pass
            writer.close()

            target["resolver"] = fixed_resolver(host, int(port))
            assert (await http.fetch(f"{tunnel.url}/small")).body == b"ok"
            await download
            assert digest.hexdigest() == hashlib.sha256(blob(size, 3)).hexdigest()
            assert tunnel.metrics.reconnects == 0
            http.close()
    finally:
        await shutdown(standin, server)


async def test_basic_mode_with_an_old_agent(notebook):
    standin = start_ssm_standin(notebook.address, "--agent-version", "3.0.196.0")
    try:
        async with Tunnel(INSTANCE_ID, 8888, endpoint_url=standin.address) as tunnel:
            assert tunnel.mode == "basic"
            http = client()
            for _ in range(3):
                assert (await http.fetch(f"{tunnel.url}/small")).body == b"ok"
            http.close()
    finally:
        standin.stop()


async def test_lossy_channel_still_delivers_every_byte_once_in_order(ssm):
    """streaming.go / datachannel.go: sequence numbers, acks and retransmission repair lost,
    repeated and reordered messages in both directions."""
    size = 1024 * 1024
    async with Tunnel(INSTANCE_ID, 8888, endpoint_url=ssm.address) as tunnel:
        for seed, kind in enumerate(("drop", "duplicate", "reorder", "delay")):
            ssm_control(
                ssm,
                "POST",
                "/faults",
                {
                    "kind": kind,
                    "direction": "both",
                    "sessionId": tunnel.session_id,
                    "probability": 0.01,
                    "count": None,
                    "delay": 0.05,
                    "seed": seed,
                },
            )
        http = client()
        response = await http.fetch(f"{tunnel.url}/blob?size={size}&seed=11", request_timeout=120)
        upload = blob(size // 3, 12)
        answer = await http.fetch(
            f"{tunnel.url}/sha256", method="POST", body=upload, request_timeout=120
        )
        http.close()
        assert response.body == blob(size, 11)
        assert tornado.escape.json_decode(answer.body)["sha256"] == (
            hashlib.sha256(upload).hexdigest()
        )
        assert tunnel.metrics.reconnects == 0  # repaired in-session, no reconnect
    ssm_control(ssm, "DELETE", "/faults")


async def test_an_upgrade_the_service_refuses_is_a_clear_error(ssm, monkeypatch):
    """The stand-in checks the SigV4 signature of the upgrade as the service does; signed with
    a secret it does not know, the upgrade gets HTTP 403 and the tunnel reports, at once, the
    call that failed and the permission and signature the caller needs."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    tunnel = Tunnel(INSTANCE_ID, 8888, endpoint_url=ssm.address, region="us-east-1")
    with pytest.raises(SessionError) as info:
        await tunnel.start()
    assert info.value.call == "websocket connect" and info.value.code == "AccessDeniedException"
    assert "ssmmessages:OpenDataChannel" in str(info.value)
    assert tunnel.metrics.sessions_opened == 0
    state = ssm_control(ssm, "GET", "/state")
    assert not [s for s in state["sessions"] if s["Status"] in ("Connected", "Connecting")]
