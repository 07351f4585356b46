"""Trust suite: an operator operates servers and never reads or uses another person's
credentials (finding 6 of the trust review: members of an admin team were JupyterHub
admins, whose role includes ``admin:auth_state``, ``tokens`` and ``access:servers``).

alice is in the demo's admin team and in ad-portal; bob is an analyst with a running
server. Each test is an attempt alice could make with her own browser session.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.integration.harness import own_hub, sign_in, wait_until
from tests.integration.spawn_harness import server_model, start_server, stop_server

pytestmark = pytest.mark.integration

ALICE = "3400001"
ADMIN_TEAM = "3500000"


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    with own_hub(cloud, tmp_path_factory.mktemp("hub-operator"), "trust-operator") as hub:
        yield hub


@pytest.fixture(scope="module")
def bobs_server(hub):
    sign_in(hub, "bob")
    start_server(hub, "bob", {"community": "ad-portal"})
    yield
    if (server_model(hub, "bob") or {}).get("ready"):
        stop_server(hub, "bob")


def as_alice(hub) -> requests.Session:
    session, page = sign_in(hub, "alice")
    assert page.url == f"{hub.url}/hub/home"
    session.get(f"{hub.url}/hub/token", timeout=30)  # sets the XSRF cookie, as a page does
    session.headers["X-XSRFToken"] = session.cookies.get("_xsrf", "")
    return session


def test_an_operator_cannot_read_another_users_synapse_token(hub, bobs_server):
    alice = as_alice(hub)
    answer = alice.get(f"{hub.url}/hub/api/users/bob", timeout=30)
    assert answer.status_code == 200  # she sees bob and his server ...
    assert "auth_state" not in answer.json()  # ... not his tokens
    assert answer.json()["servers"][""]["ready"]
    listing = alice.get(f"{hub.url}/hub/api/users?include_stopped_servers=1", timeout=30)
    assert listing.status_code == 200
    assert all("auth_state" not in user for user in listing.json())
    token = hub.auth_state("bob")["access_token"]
    assert token not in listing.text and token not in answer.text


def test_an_operator_cannot_make_a_token_for_another_user(hub, bobs_server):
    alice = as_alice(hub)
    answer = alice.post(
        f"{hub.url}/hub/api/users/bob/tokens", json={"note": "impersonation"}, timeout=30
    )
    assert answer.status_code in (403, 404), answer.text
    assert "token" not in answer.json()
    mine = hub.api("GET", "/users/bob/tokens").json()["api_tokens"]
    assert not [t for t in mine if t.get("note") == "impersonation"]


def test_an_operator_cannot_open_another_users_notebook(hub, bobs_server):
    alice = as_alice(hub)
    # as a browser does: the notebook's page sends her to the hub's OAuth authorization,
    # which refuses (no access:servers on bob's server) instead of offering to authorize
    answer = alice.get(f"{hub.url}/user/bob/lab", timeout=60)
    assert answer.status_code == 403, (answer.status_code, answer.url)
    assert "/hub/api/oauth2/authorize" in answer.url and "Authorize" not in answer.text
    assert "jupyterhub-user-bob" not in {c.name for c in alice.cookies}  # no session there


def test_an_operator_can_stop_another_users_server(hub, bobs_server):
    alice = as_alice(hub)
    answer = alice.delete(f"{hub.url}/hub/api/users/bob/server", timeout=60)
    assert answer.status_code in (202, 204), answer.text
    wait_until(lambda: not (server_model(hub, "bob") or {}).get("ready"), 120, "bob's stop")


def test_an_operator_can_start_another_users_server(hub, bobs_server):
    """The operator role's ``servers`` holds JupyterHub 6's ``start:servers`` (and is what
    5.2's start asks for): alice starts bob's stopped server again with his last choices,
    and it runs as bob's."""
    alice = as_alice(hub)
    if (server_model(hub, "bob") or {}).get("ready"):
        stop_server(hub, "bob")
    answer = alice.post(f"{hub.url}/hub/api/users/bob/server", json={}, timeout=60)
    assert answer.status_code in (201, 202), answer.text
    wait_until(lambda: (server_model(hub, "bob") or {}).get("ready"), 180, "bob's start")
    stop_server(hub, "bob")


def test_an_operator_reads_the_audit_log_and_an_analyst_cannot(hub, bobs_server):
    """Operators answer "who did what to bob's server?" from the hub (``/hub/audit``,
    filtered; ``format=jsonl`` for tools) without a shell on the hub host. The page shows no
    token (the log holds none by construction), and bob, an analyst, is refused it: it names
    other people and their servers."""
    alice = as_alice(hub)
    page = alice.get(f"{hub.url}/hub/audit", params={"user": "bob"}, timeout=30)
    assert page.status_code == 200, page.text
    assert "snh-audit-table" in page.text and "launch" in page.text
    lines = alice.get(
        f"{hub.url}/hub/audit",
        params={"user": "bob", "action": "start", "format": "jsonl"},
        timeout=30,
    )
    records = [json.loads(line) for line in lines.text.splitlines()]
    assert records and all(r["user"] == "bob" and r["action"] == "start" for r in records)
    token = hub.auth_state("bob")["access_token"]
    assert token not in page.text and token not in lines.text
    wrong = alice.get(f"{hub.url}/hub/audit", params={"action": "launched"}, timeout=30)
    assert wrong.status_code == 400 and "Unknown action" in wrong.text

    bob, _ = sign_in(hub, "bob")
    refused = bob.get(f"{hub.url}/hub/audit", timeout=30)
    assert refused.status_code == 403
    assert "launch" not in refused.text


def test_a_removed_operator_loses_the_operator_role(hub, cloud):
    """alice leaves the admin team but stays in ad-portal: within auth_refresh_age she is
    an analyst like any other (the admin page refuses her)."""
    alice = as_alice(hub)
    assert alice.get(f"{hub.url}/hub/admin", timeout=30).status_code == 200
    cloud.remove_member(ADMIN_TEAM, ALICE)
    try:
        time.sleep(1.2)  # past auth_refresh_age: the next request refreshes her groups

        def refused() -> bool:
            return alice.get(f"{hub.url}/hub/admin", timeout=30).status_code == 403

        wait_until(refused, 30, "the admin page to refuse alice")
        scopes = alice.get(f"{hub.url}/hub/api/user", timeout=30).json()["scopes"]
        assert "admin-ui" not in scopes and "servers" not in scopes
        assert alice.get(f"{hub.url}/hub/home", timeout=30).status_code == 200  # still in
    finally:
        cloud.add_member(ADMIN_TEAM, ALICE)
