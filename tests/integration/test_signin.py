"""Sign-in with Synapse through a real JupyterHub and configurable-http-proxy, against the
Synapse stand-in over loopback HTTP."""

from __future__ import annotations

import concurrent.futures
import time
from urllib.parse import urljoin

import pytest
import requests

from .harness import FormParser, sign_in
from .spawn_harness import start_server, stop_server

pytestmark = pytest.mark.integration

ALICE, BOB, MALLORY = "3400001", "3400002", "3400003"
AD_TEAM, NF_TEAM, ADMIN_TEAM = "3500001", "3500002", "3500000"


def test_member_signs_in_and_lands_on_home(hub):
    _, page = sign_in(hub, "bob")
    assert page.status_code == 200
    assert page.url == f"{hub.url}/hub/home"
    assert "bob" in page.text
    user = hub.user("bob")
    assert user["admin"] is False
    assert sorted(user["groups"]) == ["ad-portal", "nf-osc"]


def test_auth_state_holds_tokens_and_identity(hub):
    sign_in(hub, "bob")
    state = hub.auth_state("bob")
    assert state["userid"] == BOB
    assert state["user_name"] == "bob"
    assert state["email"] == "bob@example.org"
    assert state["teams"] == [AD_TEAM, NF_TEAM]
    assert state["access_token"] and state["refresh_token"] and state["id_token"]
    assert set(state["scope"]) >= {"openid", "view", "download", "modify", "offline_access"}


def test_non_member_is_refused_with_the_team_page(hub):
    _, page = sign_in(hub, "mallory")
    assert page.status_code == 403
    assert 'id="synapse-team-refusal"' in page.text
    for team in (AD_TEAM, NF_TEAM, ADMIN_TEAM):
        assert f"https://www.synapse.org/#!Team:{team}" in page.text
    assert "AD Knowledge Portal (demo)" in page.text
    assert "Traceback" not in page.text
    assert hub.user("mallory") is None  # nothing half-created


def test_admin_team_member_gets_the_admin_panel_as_an_operator(hub):
    alice, page = sign_in(hub, "alice")
    assert page.status_code == 200
    assert hub.user("alice")["admin"] is False
    scopes = alice.get(f"{hub.url}/hub/api/user", timeout=30).json()["scopes"]
    assert "admin-ui" in scopes and "servers" in scopes  # the community-operator role
    assert not {"admin:auth_state", "tokens", "access:servers", "admin:users"} & set(scopes)
    assert alice.get(f"{hub.url}/hub/admin", timeout=30).status_code == 200
    bob, _ = sign_in(hub, "bob")
    assert bob.get(f"{hub.url}/hub/admin", timeout=30).status_code == 403


def test_expired_access_token_is_rotated_at_refresh(hub, cloud):
    """Synapse: access tokens live 24 h, refresh tokens are single use and rotated."""
    session, _ = sign_in(hub, "alice")
    before = hub.auth_state("alice")
    cloud.advance_clock(24 * 3600 + 60)
    time.sleep(1.2)  # auth_refresh_age = 1 s in the test config
    page = session.get(f"{hub.url}/hub/home", timeout=30)
    assert page.status_code == 200 and page.url == f"{hub.url}/hub/home"
    after = hub.auth_state("alice")
    assert after["access_token"] != before["access_token"]
    assert after["refresh_token"] != before["refresh_token"]
    # the old refresh token is spent: Synapse refuses it now
    r = requests.post(
        f"{cloud.synapse['issuer']}/oauth2/token",
        data={"grant_type": "refresh_token", "refresh_token": before["refresh_token"]},
        auth=(cloud.synapse["client_id"], cloud.synapse["client_secret"]),
        timeout=10,
    )
    assert r.status_code == 400


def test_spawn_request_rotates_tokens_first(hub):
    """The notebook starts with a fresh 24 h token: JupyterHub refreshes auth before a spawn,
    and the authenticator rotates the tokens for spawn requests."""
    sign_in(hub, "alice")
    before = hub.auth_state("alice")
    time.sleep(1.2)
    start_server(hub, "alice", name="fresh-token")
    after = hub.auth_state("alice")
    assert after["refresh_token"] != before["refresh_token"]
    assert after["expires_at"] > before["expires_at"]
    stop_server(hub, "alice", name="fresh-token")


def test_racing_requests_with_an_expired_token_do_not_sign_the_user_out(hub, cloud):
    session, _ = sign_in(hub, "alice")
    cloud.advance_clock(24 * 3600 + 60)
    time.sleep(1.2)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        pages = list(pool.map(lambda _: session.get(f"{hub.url}/hub/home", timeout=30), range(6)))
    assert [p.url for p in pages] == [f"{hub.url}/hub/home"] * 6
    time.sleep(1.2)
    assert session.get(f"{hub.url}/hub/home", timeout=30).url == f"{hub.url}/hub/home"


def test_user_removed_from_teams_is_refused_at_next_refresh(hub, cloud):
    session, page = sign_in(hub, "bob")
    assert page.url == f"{hub.url}/hub/home"
    cloud.remove_member(AD_TEAM, BOB)
    cloud.remove_member(NF_TEAM, BOB)
    try:
        time.sleep(1.2)
        page = session.get(f"{hub.url}/hub/home", timeout=30)
        assert "/hub/login" in page.url  # must sign in again
        _, page = sign_in(hub, "bob", session=session)
        assert page.status_code == 403 and "synapse-team-refusal" in page.text
    finally:
        cloud.add_member(AD_TEAM, BOB)
        cloud.add_member(NF_TEAM, BOB)


def test_synapseclient_logs_in_with_the_token_from_auth_state(hub, cloud, tmp_path):
    synapseclient = pytest.importorskip("synapseclient")
    sign_in(hub, "alice")
    token = hub.auth_state("alice")["access_token"]
    config = tmp_path / "synapseConfig"
    config.write_text("")
    base = cloud.synapse["base_url"]
    syn = synapseclient.Synapse(
        repoEndpoint=f"{base}/repo/v1",
        authEndpoint=f"{base}/auth/v1",
        fileHandleEndpoint=f"{base}/file/v1",
        portalEndpoint=f"{base}/",
        skip_checks=True,
        configPath=str(config),
        silent=True,
        cache_client=False,
    )
    syn.login(authToken=token, silent=True)
    assert syn.restGET("/userProfile")["userName"] == "alice"


# -- failures: a clear page, no stack trace, nothing created ------------------------------


def _assert_clear_page(page: requests.Response, status: int, text: str) -> None:
    assert page.status_code == status, page.text[:800]
    assert text in page.text
    assert "Sign in again" in page.text
    assert "Traceback" not in page.text


def test_consent_denied(hub):
    _, page = sign_in(hub, "bob", consent="deny")
    _assert_clear_page(page, 403, "chose not to share")


def test_wrong_state_is_refused(hub):
    s = requests.Session()
    s.get(f"{hub.url}/hub/oauth_login", timeout=30)  # sets the state cookie
    page = s.get(f"{hub.url}/hub/oauth_callback?code=abc&state=forged", timeout=30)
    _assert_clear_page(page, 400, "could not be completed")


def _code_callback(hub, username: str = "bob") -> tuple[requests.Session, str]:
    """Sign in at the stand-in but stop before the hub's callback: (session, callback URL)."""
    s = requests.Session()
    login = s.get(f"{hub.url}/hub/oauth_login", timeout=30)
    form = FormParser()
    form.feed(login.text)
    answer = s.post(
        urljoin(login.url, form.action or ""),
        data={**form.fields, "username": username, "consent": "allow"},
        allow_redirects=False,
        timeout=30,
    )
    assert answer.status_code == 302, answer.text[:500]
    return s, answer.headers["Location"]


def test_replayed_code_is_refused(hub):
    """Synapse: an authorization code can be redeemed once."""
    first, callback = _code_callback(hub)
    second = requests.Session()
    second.cookies.update(first.cookies)  # same valid state cookie, so only the code is stale
    assert first.get(callback, timeout=30).url == f"{hub.url}/hub/home"
    _assert_clear_page(second.get(callback, timeout=30), 400, "could not be completed")


def test_expired_code_is_refused(hub, cloud):
    """Synapse: an authorization code expires 60 s after it is issued."""
    s, callback = _code_callback(hub)
    cloud.advance_clock(120)
    _assert_clear_page(s.get(callback, timeout=30), 400, "could not be completed")


@pytest.mark.parametrize("status", [500, 503])
def test_synapse_error_at_token_endpoint(hub, cloud, status):
    cloud.inject_fault(path="/auth/v1/oauth2/token", method="POST", status=status, count=1)
    _, page = sign_in(hub, "bob")
    _assert_clear_page(page, 503, "did not answer")


def test_synapse_timeout_at_userinfo(hub, cloud):
    cloud.inject_fault(path="/auth/v1/oauth2/userinfo", delay=10, count=1)
    started = time.monotonic()
    _, page = sign_in(hub, "bob")
    _assert_clear_page(page, 503, "did not answer")
    assert time.monotonic() - started < 10  # the hub's request timeout, 3 s in tests


def test_synapse_4xx_at_userinfo_creates_nobody(hub, cloud):
    cloud.control(
        "POST",
        "/users",
        {
            "userId": "3400077",
            "userName": "newcomer",
            "firstName": "New",
            "lastName": "Comer",
            "email": "newcomer@example.org",
            "teams": [AD_TEAM],
        },
    )
    cloud.inject_fault(
        path="/auth/v1/oauth2/userinfo",
        status=401,
        count=1,
        body={"reason": "Invalid access token"},
    )
    _, page = sign_in(hub, "newcomer")
    _assert_clear_page(page, 400, "could not be completed")
    assert hub.user("newcomer") is None
