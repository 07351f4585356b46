"""Trust suite: access follows Synapse team membership at every door.

Each test is an attack a real person could try, against a real hub on the local cloud; each
asserts the refusal and that nothing was created, changed or leaked. Findings of the review in
issue "The trust boundary of a PHI-safe workspace" (1: a removed member kept their API token,
their running server and, for admins, admin rights on tokens; 5: tokens were never revoked at
Synapse).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import time

import jupyterhub
import pytest
import requests

from tests.integration.harness import own_hub, sign_in, wait_until
from tests.integration.spawn_harness import (
    front_control,
    instances_of,
    server_model,
    start_server,
)

pytestmark = pytest.mark.integration

BOB = "3400002"
AD_TEAM, NF_TEAM = "3500001", "3500002"
HUB_ID = "trust-suite"


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    with own_hub(cloud, tmp_path_factory.mktemp("hub-trust"), HUB_ID) as hub:
        yield hub


def audited(hub, action: str, user: str) -> bool:
    return any(r.get("user") == user for r in hub.audit_lines(action))


def refresh_token_id(hub, user: str) -> str:
    """The id Synapse gave the user's refresh token as this hub holds it: the access token
    that came with it names it (claim ``refresh_token_id``). Other test modules' hubs (the
    same OAuth client) hold refresh tokens of the same people, which this hub must not
    revoke; the id tells them apart."""
    payload = hub.auth_state(user)["access_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["refresh_token_id"])


def refresh_token_active(cloud, token_id: str) -> bool:
    state = cloud.control("GET", "/state").json()
    return any(t["token_id"] == token_id and t["active"] for t in state["refresh_tokens"])


def test_the_hub_under_attack_runs_the_jupyterhub_asked_for(hub):
    """``make test`` runs this suite twice: on the newest JupyterHub the project pins, and on
    the oldest it supports (``SNH_EXPECT_JUPYTERHUB``, an overlay of that release); the
    lockout must hold on both. This proves the hub process really is the one asked for."""
    expected = os.environ.get("SNH_EXPECT_JUPYTERHUB")
    version = requests.get(f"{hub.url}/hub/api/", timeout=30).json()["version"]
    assert version == (expected or jupyterhub.__version__)


def test_a_removed_member_loses_token_cookie_and_server_within_the_refresh_age(hub, cloud):
    """Bob has a browser session, an API token (his laptop's) and a running server with his
    community's data role. His community manager removes him from the Synapse teams. Within
    ``auth_refresh_age`` (1 s here) of his next request all three end: the token is refused
    and deleted, the browser must sign in again (and is refused at the team gate), the server
    is stopped with its disk kept, his Synapse tokens are revoked at Synapse and gone from the
    hub, and the event is in the audit log."""
    session, page = sign_in(hub, "bob")
    assert page.url == f"{hub.url}/hub/home"
    # his own token, made as on the hub's token page (his session, its XSRF cookie)
    session.get(f"{hub.url}/hub/token", timeout=30)
    created = session.post(
        f"{hub.url}/hub/api/users/bob/tokens",
        json={"note": "laptop"},
        headers={"X-XSRFToken": session.cookies.get("_xsrf", "")},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    as_bob = {"Authorization": f"token {token}"}
    assert requests.get(f"{hub.url}/hub/api/user", headers=as_bob, timeout=30).status_code == 200
    model = start_server(hub, "bob")
    assert model["ready"]
    token_id = refresh_token_id(hub, "bob")
    assert refresh_token_active(cloud, token_id)
    [instance] = instances_of(cloud, "bob", hub_id=HUB_ID)
    assert instance["State"]["Name"] == "running"
    assert hub.user("bob")["groups"]  # his communities' groups, as a member

    cloud.remove_member(AD_TEAM, BOB)
    cloud.remove_member(NF_TEAM, BOB)
    try:
        time.sleep(1.2)  # past auth_refresh_age: the next request refreshes
        # the attack: keep using the laptop's token, e.g. to start the server again
        answer = requests.post(
            f"{hub.url}/hub/api/users/bob/server", headers=as_bob, json={}, timeout=60
        )
        assert answer.status_code == 403, answer.text

        def all_gone() -> bool:
            r = requests.get(f"{hub.url}/hub/api/user", headers=as_bob, timeout=30)
            return r.status_code == 403

        wait_until(all_gone, 60, "the token to be refused")
        assert hub.api("GET", "/users/bob/tokens").json()["api_tokens"] == []
        wait_until(lambda: not (server_model(hub, "bob") or {}).get("ready"), 120, "stop")
        wait_until(
            lambda: instances_of(cloud, "bob", hub_id=HUB_ID)[0]["State"]["Name"] == "stopped",
            120,
            "the instance to stop",
        )
        # stopped, not terminated: the disk is kept
        [instance] = instances_of(cloud, "bob", hub_id=HUB_ID)
        assert instance["BlockDeviceMappings"]
        assert hub.user("bob")["groups"] == []  # no community's culler, no group's role
        assert not hub.auth_state("bob")  # forgotten by the hub ...
        assert not refresh_token_active(cloud, token_id)  # ... and revoked at Synapse
        page = session.get(f"{hub.url}/hub/home", timeout=30)
        assert "/hub/login" in page.url  # the browser session has ended
        _, page = sign_in(hub, "bob", session=session)
        assert page.status_code == 403 and "synapse-team-refusal" in page.text
        assert "Access of bob ended (no longer in any allowed team)" in hub.log()
        wait_until(lambda: audited(hub, "access_ended", "bob"), 30, "the audit line")
    finally:
        cloud.add_member(AD_TEAM, BOB)
        cloud.add_member(NF_TEAM, BOB)


def test_a_removed_member_who_sends_no_request_loses_the_running_server(hub, cloud):
    """Bob's job runs in his server and he silences what in it talks to the hub (its
    activity reports, which are requests as bob: he controls the container). His manager
    removes him from the teams. JupyterHub re-checks membership only on requests as him, so
    before, his server and its data-access role ran on until his token neared expiry (up to
    a day). The hub's own poll checks the owner's teams within ``auth_refresh_age`` (1 s
    here) plus one poll (2 s): the server is stopped with its disk kept, his Synapse tokens
    are revoked, and the event is audited, with no request as bob at all."""
    sign_in(hub, "bob")
    assert start_server(hub, "bob")["ready"]
    token_id = refresh_token_id(hub, "bob")
    ended_before = len([r for r in hub.audit_lines("access_ended") if r.get("user") == "bob"])
    [instance] = instances_of(cloud, "bob", hub_id=HUB_ID)
    [simulated] = [
        i
        for i in front_control(cloud, "GET", "/instances")["instances"]
        if i["instanceId"] == instance["InstanceId"]
    ]
    notebook = simulated["pid"]  # its process group: the notebook and what it started
    os.killpg(notebook, signal.SIGSTOP)

    cloud.remove_member(AD_TEAM, BOB)
    cloud.remove_member(NF_TEAM, BOB)
    try:
        # no request as bob from here on: only the hub's poll can notice
        wait_until(
            lambda: instances_of(cloud, "bob", hub_id=HUB_ID)[0]["State"]["Name"] == "stopped",
            180,
            "the poll to stop bob's instance",
        )
        [instance] = instances_of(cloud, "bob", hub_id=HUB_ID)
        assert instance["BlockDeviceMappings"]  # stopped, not terminated: the disk is kept
        wait_until(lambda: not hub.auth_state("bob"), 60, "the hub to forget his tokens")
        assert not refresh_token_active(cloud, token_id)
        wait_until(
            lambda: (
                len([r for r in hub.audit_lines("access_ended") if r.get("user") == "bob"])
                == ended_before + 1
            ),
            30,
            "the audit line",
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(notebook, signal.SIGCONT)
        cloud.add_member(AD_TEAM, BOB)
        cloud.add_member(NF_TEAM, BOB)


def test_logout_revokes_the_synapse_tokens(hub, cloud):
    """Finding 5: a 180-day refresh token left behind at logout stays usable at Synapse by
    whoever reads the hub's database later. Logout revokes it and the hub forgets it."""
    session, _ = sign_in(hub, "alice")
    token_id = refresh_token_id(hub, "alice")
    assert refresh_token_active(cloud, token_id)
    session.get(f"{hub.url}/hub/logout", timeout=30)
    assert not hub.auth_state("alice")
    assert not refresh_token_active(cloud, token_id)


def test_deleting_a_user_revokes_their_synapse_tokens(hub, cloud):
    """Finding 5, user deletion: the hub forgets the user's auth_state with the user; the
    refresh token it held is revoked at Synapse as well, not left valid for 180 days."""
    sign_in(hub, "bob")
    token_id = refresh_token_id(hub, "bob")
    assert refresh_token_active(cloud, token_id)
    answer = hub.api("DELETE", "/users/bob")
    assert answer.status_code == 204, answer.text
    assert hub.user("bob") is None
    # the revocation runs right after the deletion (delete_user is synchronous)
    wait_until(lambda: not refresh_token_active(cloud, token_id), 30, "revocation at Synapse")
