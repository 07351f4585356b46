"""Trust suite: full JupyterHub admin ends when the deployment takes a name off its list.

JupyterHub's ``admin_users`` only ever adds admins: a user who was admin once (a break-glass
name since removed, or anyone an older configuration made admin, such as admin-team members
before the operator role) kept ``admin`` — with ``admin:auth_state``, ``tokens`` and
``access:servers`` — across restarts. The hub declares the ``admin`` role with exactly the
break-glass names, so JupyterHub sets the role and the ``admin`` flag to match at start-up
("a role specified in ``load_roles`` with ``users`` is an exact list", JupyterHub's RBAC docs).
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.integration.harness import hub_env, hub_test_config, sign_in, start_hub, wait_until

pytestmark = pytest.mark.integration

BOB = "3400002"
AD_TEAM, NF_TEAM = "3500001", "3500002"


def _own_token(hub, user: str) -> dict[str, str]:
    """An API token made as on the hub's token page, with the user's browser session."""
    session, page = sign_in(hub, user)
    assert page.url == f"{hub.url}/hub/home"
    session.get(f"{hub.url}/hub/token", timeout=30)
    made = session.post(
        f"{hub.url}/hub/api/users/{user}/tokens",
        json={"note": "break-glass laptop"},
        headers={"X-XSRFToken": session.cookies.get("_xsrf", "")},
        timeout=30,
    )
    assert made.status_code == 201, made.text
    return {"Authorization": f"token {made.json()['token']}"}


def break_glass_env(cloud, tmp_path, hub_id: str, names: str) -> dict[str, str]:
    """A hub of its own id whose break-glass admins are ``names``."""
    config = hub_test_config(tmp_path)
    return hub_env(
        cloud,
        tmp_path,
        SNH_HUB_ID=hub_id,
        SNH_EXTRA_CONFIG=str(config),
        SNH_BREAK_GLASS_ADMINS=names,
    )


def test_a_name_taken_off_the_break_glass_list_is_no_admin_after_a_restart(cloud, tmp_path):
    """bob is a break-glass admin and keeps an API token. The operators take him off
    ``SNH_BREAK_GLASS_ADMINS`` and restart the hub. He never signs in again: his token alone
    must lose admin at once — no ``admin:auth_state``, no other user's tokens or servers."""
    env = break_glass_env(cloud, tmp_path, "trust-break-glass", "bob")
    hub = start_hub(env, tmp_path / "hub.log")
    try:
        as_bob = _own_token(hub, "bob")
        me = requests.get(f"{hub.url}/hub/api/user", headers=as_bob, timeout=30).json()
        assert me["admin"] is True and "admin:auth_state" in me["scopes"]  # break-glass, as meant
        sign_in(hub, "alice")
        alice = requests.get(f"{hub.url}/hub/api/users/alice", headers=as_bob, timeout=30)
        assert alice.status_code == 200
    finally:
        hub.stop()

    env["SNH_BREAK_GLASS_ADMINS"] = ""
    hub = start_hub(env, tmp_path / "hub.log")
    try:
        me = requests.get(f"{hub.url}/hub/api/user", headers=as_bob, timeout=30)
        assert me.status_code == 200, me.text  # still a member: still a user
        assert me.json()["admin"] is False
        assert not {"admin:auth_state", "tokens", "access:servers", "admin:users"} & set(
            me.json()["scopes"]
        )
        for method, path in (
            ("GET", "/hub/api/users/alice"),
            ("POST", "/hub/api/users/alice/tokens"),
            ("GET", "/hub/api/users/alice/tokens"),
        ):
            answer = requests.request(method, f"{hub.url}{path}", headers=as_bob, timeout=30)
            assert answer.status_code in (403, 404), (method, path, answer.status_code)
        assert hub.user("bob")["admin"] is False
        assert "Removing admin=True from <User(bob" in hub.log()
    finally:
        hub.stop()


def test_a_removed_member_made_admin_at_run_time_is_admin_no_more(cloud, tmp_path):
    """alice, a break-glass admin, makes bob a JupyterHub admin while the hub runs
    (``PATCH admin``: every right on every user, until the next restart). bob is then
    removed from the teams. At the next request with his token the lockout takes the admin
    flag and role away with everything else (finding 1: an admin removed from the teams
    kept admin rights on tokens), and says so in the audit line."""
    env = break_glass_env(cloud, tmp_path, "trust-made-admin", "alice")
    hub = start_hub(env, tmp_path / "hub.log")
    try:
        as_alice = _own_token(hub, "alice")
        as_bob = _own_token(hub, "bob")
        made = requests.patch(
            f"{hub.url}/hub/api/users/bob", headers=as_alice, json={"admin": True}, timeout=30
        )
        assert made.status_code == 200, made.text
        me = requests.get(f"{hub.url}/hub/api/user", headers=as_bob, timeout=30).json()
        assert me["admin"] is True and "admin:auth_state" in me["scopes"]

        cloud.remove_member(AD_TEAM, BOB)
        cloud.remove_member(NF_TEAM, BOB)
        time.sleep(1.2)  # past auth_refresh_age: his next request refreshes
        listed = requests.get(f"{hub.url}/hub/api/users", headers=as_bob, timeout=30)
        assert listed.status_code == 403, listed.text
        bob = hub.user("bob")
        assert bob["admin"] is False and "admin" not in bob["roles"]
        assert hub.api("GET", "/users/bob/tokens").json()["api_tokens"] == []
        wait_until(
            lambda: any(
                r.get("user") == "bob" and "admin removed" in r.get("reason", "")
                for r in hub.audit_lines("access_ended")
            ),
            30,
            "the audit line naming the admin flag",
        )
    finally:
        cloud.add_member(AD_TEAM, BOB)
        cloud.add_member(NF_TEAM, BOB)
        hub.stop()
