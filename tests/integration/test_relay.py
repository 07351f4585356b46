"""The relay (``operations.relay``) with its client (``operations.client``), against a real
hub on the local cloud: the owner's token with the ``custom:snh-relay`` scope reaches a port
of their running server through the hub's Session Manager tunnel; everything else is refused
with the reason. The community here also allows port 8888 (the notebook server the simulated
instance runs), so that the refusals and the activity rule are checked on plain HTTP bytes;
SSH through the relay, with the real OpenSSH client and sshd, is ``test_ssh.py``."""

from __future__ import annotations

import asyncio
import json

import pytest

from operations.client import Login, RelayError, connect
from tests.integration.harness import communities_changed, own_hub, token_for, wait_until
from tests.integration.spawn_harness import start_server, stop_server

pytestmark = pytest.mark.integration

HUB_ID = "relay-tests"
ALLOW_NOTEBOOK_PORT = communities_changed(relay_ports=(22, 8888))


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    with own_hub(
        cloud, tmp_path_factory.mktemp("hub-relay"), HUB_ID, extra=ALLOW_NOTEBOOK_PORT
    ) as hub:
        yield hub


async def http_through_relay(login: Login, user: str, port: int, padding: int = 0) -> bytes:
    ws = await connect(login, user, "", port)
    extra = f"X-Padding: {'x' * padding}\r\n" if padding else ""
    request = f"GET /user/{user}/api HTTP/1.1\r\nHost: notebook\r\n{extra}Connection: close\r\n\r\n"
    await ws.write_message(request.encode(), binary=True)
    answer = b""
    while (message := await asyncio.wait_for(ws.read_message(), 60)) is not None:
        answer += message if isinstance(message, bytes) else b""
        if b"\r\n\r\n" in answer:
            break
    ws.close()
    return answer


def refusal(login: Login, user: str, port: int) -> str:
    with pytest.raises(RelayError) as refused:
        asyncio.run(http_through_relay(login, user, port))
    return str(refused.value)


def relay_lines(hub) -> list[dict]:
    path = hub.log_path.parent / "audit.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, filter(None, lines)) if r["action"].startswith("relay")]


def test_the_owner_reaches_an_allowed_port_and_nobody_else_does(hub):
    ssh_only = Login(hub.url, token_for(hub, "alice", ["custom:snh-relay!user"]), "alice")
    start_server(hub, "alice")

    answer = asyncio.run(http_through_relay(ssh_only, "alice", 8888))
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]  # the notebook server answered
    wait_until(lambda: any(r["action"] == "relay" for r in relay_lines(hub)), 30, "audit")
    [line] = [r for r in relay_lines(hub) if r["action"] == "relay"]
    assert (line["user"], line["port"], line["actor"]) == ("alice", 8888, "user")
    assert line["bytes_in"] > 0 and line["bytes_out"] > 0

    # typing-sized traffic from the computer marks the server active (the ActivityMeter rule;
    # its unit tests cover what does not)
    before = hub.user("alice")["servers"][""]["last_activity"]
    asyncio.run(http_through_relay(ssh_only, "alice", 8888, padding=2048))
    wait_until(lambda: hub.user("alice")["servers"][""]["last_activity"] > before, 30, "activity")

    # a port the community does not allow
    assert "not open for connections" in refusal(ssh_only, "alice", 9999)
    # a token without the scope (its owner's, for other things)
    other = Login(hub.url, token_for(hub, "alice", ["read:users!user"]), "alice")
    assert "lacks the custom:snh-relay scope" in refusal(other, "alice", 8888)
    # someone else's token, on alice's server (bob is an analyst; alice is also an operator)
    bob = Login(hub.url, token_for(hub, "bob", None), "bob")
    assert "only to your own servers" in refusal(bob, "alice", 8888)
    # no token at all
    assert "403" in refusal(Login(hub.url, "not-a-token", "alice"), "alice", 8888)
    refused = [r for r in relay_lines(hub) if r["action"] == "relay_refused"]
    assert len(refused) >= 3

    stop_server(hub, "alice")
    assert "is not running" in refusal(ssh_only, "alice", 8888)


def test_a_removed_member_loses_the_relay_with_everything_else(hub, cloud):
    """bob keeps an SSH-only token on his laptop; his community manager removes him from
    the Synapse teams. Within ``auth_refresh_age`` his next relay connection is refused (the
    refresh that sees it ends all his access: token deleted, server stopped)."""
    bob = Login(hub.url, token_for(hub, "bob", ["custom:snh-relay!user"]), "bob")
    start_server(hub, "bob")
    assert asyncio.run(http_through_relay(bob, "bob", 8888)).startswith(b"HTTP/1.1 ")
    teams = ("3500001", "3500002")  # ad-portal, nf-osc
    for team in teams:
        cloud.remove_member(team, "3400002")
    try:

        def refused() -> bool:
            try:
                asyncio.run(http_through_relay(bob, "bob", 8888))
            except RelayError as e:
                return "403" in str(e)
            return False

        wait_until(refused, 60, "the relay to refuse bob's token")
        wait_until(lambda: not (hub.user("bob") or {}).get("servers"), 120, "bob's server to stop")
    finally:
        for team in teams:
            cloud.add_member(team, "3400002")
