"""Unit tests of SynapseOAuthenticator: claims request, team gate, admin mapping, username
rule, userid binding and refresh logic. Synapse is replaced by stubs of the two calls the
authenticator makes (token and userinfo), so each rule is checked on its own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse

import pytest
from oauthenticator.oauth2 import _serialize_state
from traitlets.config import Config

from authenticator import SynapseOAuthenticator
from authenticator.claims import (
    ClaimsError,
    claims_request,
    identity_from_userinfo,
    normalize_username,
)
from authenticator.errors import SignInError
from authenticator.synapse import SynapseCallError

COMMUNITY_TEAM, OTHER_COMMUNITY_TEAM, ADMIN_TEAM = "3500001", "3500002", "3500000"


@pytest.fixture(autouse=True)
def _no_real_audit_lines(monkeypatch):
    """The authenticator audits lockouts and break-glass sign-ins; unit tests keep those
    lines out of the process's audit log (tests that check them patch `record` themselves)."""
    monkeypatch.setattr("authenticator.synapse.audit.record", lambda *args, **kwargs: None)


def make_authenticator(tmp_path, **overrides) -> SynapseOAuthenticator:
    c = Config()
    c.SynapseOAuthenticator.client_id = "client"
    c.SynapseOAuthenticator.client_secret = "secret"
    c.SynapseOAuthenticator.oauth_callback_url = "http://hub.test/hub/oauth_callback"
    c.SynapseOAuthenticator.issuer = "http://synapse.test/auth/v1"
    c.SynapseOAuthenticator.signin_url = "http://synapse.test/signin"
    c.SynapseOAuthenticator.allowed_teams = {
        COMMUNITY_TEAM: "AD Knowledge Portal",
        OTHER_COMMUNITY_TEAM: "NF Open Science",
    }
    c.SynapseOAuthenticator.admin_teams = {ADMIN_TEAM: "Hub Admins"}
    c.SynapseOAuthenticator.team_groups = {
        COMMUNITY_TEAM: "ad-portal",
        OTHER_COMMUNITY_TEAM: "nf-osc",
        ADMIN_TEAM: "admins",
    }
    c.SynapseOAuthenticator.identity_db_url = f"sqlite:///{tmp_path / 'identities.sqlite'}"
    for key, value in overrides.items():
        setattr(c.SynapseOAuthenticator, key, value)
    return SynapseOAuthenticator(config=c)


def userinfo(user_name="alice", userid="3400001", teams=(COMMUNITY_TEAM,)) -> dict:
    return {
        "sub": userid,
        "userid": userid,
        "user_name": user_name,
        "email": f"{user_name}@example.org",
        "given_name": "A",
        "family_name": "B",
        "team": list(teams),
    }


def token_info(n: int = 1) -> dict:
    return {
        "access_token": f"access-{n}",
        "refresh_token": f"refresh-{n}",
        "id_token": "id",
        "token_type": "Bearer",
        "expires_in": 86400,
    }


class FakeCallbackHandler:
    """The argument lookup oauthenticator makes on the OAuth callback request."""

    def get_argument(self, name, default=None):
        return {"code": "the-code"}.get(name, default)

    def get_state_cookie(self):  # read for PKCE (oauthenticator >= 17.1)
        return _serialize_state({"state_id": "s", "code_verifier": "v" * 43})


async def authenticate(auth: SynapseOAuthenticator, info: dict, tokens: dict | None = None):
    """oauthenticator's code flow with Synapse's two answers stubbed."""

    async def fake_token_request(params):
        assert params["code"] == "the-code" and params["grant_type"] == "authorization_code"
        return dict(tokens or token_info())

    async def fake_userinfo(access_token):
        return info

    auth._token_request = fake_token_request
    auth._userinfo = fake_userinfo
    return await auth.authenticate(FakeCallbackHandler())


async def login(auth: SynapseOAuthenticator, info: dict, tokens: dict | None = None) -> dict:
    """Authentication, then JupyterHub's allow check."""
    model = await authenticate(auth, info, tokens)
    assert await auth.check_allowed(model["name"], model)
    return model


class FakeUser:
    """The two methods of jupyterhub.user.User that refresh_user uses."""

    def __init__(self, name: str, state: dict) -> None:
        self.name = name
        self.state = state
        self.saves = 0

    async def get_auth_state(self):
        await asyncio.sleep(0)
        return dict(self.state) if self.state else None

    async def save_auth_state(self, state):
        await asyncio.sleep(0)
        self.saves += 1
        self.state = dict(state) if state is not None else None


class FakeSynapse:
    """Token and userinfo endpoints with Synapse's rotation rule: a refresh token works once."""

    def __init__(self, auth: SynapseOAuthenticator, teams=(COMMUNITY_TEAM,)) -> None:
        self.teams = list(teams)
        self.valid_refresh = {"refresh-1"}
        self.valid_access = {"access-1"}
        self.n = 1
        self.token_calls = 0
        self.userinfo_calls = 0
        self.fail_with: SynapseCallError | None = None
        auth._token_request = self.token_request
        auth._userinfo = self.userinfo

    async def token_request(self, params):
        self.token_calls += 1
        await asyncio.sleep(0.01)
        if self.fail_with:
            raise self.fail_with
        if params["refresh_token"] not in self.valid_refresh:
            raise SynapseCallError("token request", 400, "invalid_grant")
        self.valid_refresh.discard(params["refresh_token"])
        self.n += 1
        self.valid_refresh.add(f"refresh-{self.n}")
        self.valid_access.add(f"access-{self.n}")
        return token_info(self.n)

    async def userinfo(self, access_token):
        self.userinfo_calls += 1
        if self.fail_with:
            raise self.fail_with
        if access_token not in self.valid_access:
            raise SynapseCallError("userinfo request", 401, "invalid_token")
        return userinfo(teams=self.teams)


# -- claims and endpoints ----------------------------------------------------------------


def test_claims_request_names_every_team_in_both_token_and_userinfo():
    request = claims_request(["3500002", "3500000", "3500001"])
    for part in ("id_token", "userinfo"):
        claims = request[part]
        assert claims["team"] == {"values": ["3500000", "3500001", "3500002"]}
        for name in ("userid", "user_name", "email", "given_name", "family_name"):
            assert name in claims and claims[name] is None


def test_authorize_request_carries_scope_and_claims(tmp_path):
    auth = make_authenticator(tmp_path)
    assert auth.scope == ["openid", "view", "download", "modify", "offline_access"]
    claims = json.loads(auth.extra_authorize_params["claims"])
    assert claims["userinfo"]["team"]["values"] == [
        ADMIN_TEAM,
        COMMUNITY_TEAM,
        OTHER_COMMUNITY_TEAM,
    ]
    assert claims["id_token"] == claims["userinfo"]


def test_claims_follow_team_configuration_changes(tmp_path):
    auth = make_authenticator(tmp_path)
    auth.allowed_teams = {"42": "New"}
    claims = json.loads(auth.extra_authorize_params["claims"])
    assert claims["userinfo"]["team"]["values"] == ["42", ADMIN_TEAM]


def test_endpoints_derive_from_issuer_and_signin_url(tmp_path):
    auth = make_authenticator(tmp_path)
    assert auth.authorize_url == "http://synapse.test/signin"
    assert auth.token_url == "http://synapse.test/auth/v1/oauth2/token"
    assert auth.userdata_url == "http://synapse.test/auth/v1/oauth2/userinfo"
    assert auth.revoke_url == "http://synapse.test/auth/v1/oauth2/revoke"


def test_production_defaults():
    auth = SynapseOAuthenticator(allowed_teams={"1": "x"})
    assert auth.authorize_url == "https://signin.synapse.org"
    assert auth.token_url == "https://repo-prod.prod.sagebase.org/auth/v1/oauth2/token"


def test_bad_configuration_names_the_setting(tmp_path):
    with pytest.raises(Exception, match="allowed_teams: team ids must be digits"):
        make_authenticator(tmp_path, allowed_teams={"abc": "x"})
    with pytest.raises(Exception, match="issuer must be an http"):
        make_authenticator(tmp_path, issuer="synapse.org")
    auth = SynapseOAuthenticator()
    with pytest.raises(ValueError, match="allowed_teams is empty"):
        auth.check_allow_config()


# -- userinfo, username ------------------------------------------------------------------


@pytest.mark.parametrize(
    "broken, claim",
    [
        ({"userid": None}, "userid"),
        ({"userid": "abc"}, "userid"),
        ({"user_name": None}, "user_name"),
        ({"user_name": "a/b"}, "user_name"),
        ({"team": "3500001"}, "team"),
        ({"team": ["x"]}, "team"),
    ],
)
def test_malformed_userinfo_is_rejected_naming_the_claim(broken, claim):
    with pytest.raises(ClaimsError, match=claim):
        identity_from_userinfo({**userinfo(), **broken})


def test_username_is_the_lowercased_synapse_user_name():
    assert normalize_username("Alice.Smith-2") == "alice.smith-2"


# -- team gate, admin, groups ------------------------------------------------------------


async def test_member_is_allowed_with_groups_and_auth_state(tmp_path):
    auth = make_authenticator(tmp_path)
    model = await login(auth, userinfo("Bob", "3400002", [COMMUNITY_TEAM, OTHER_COMMUNITY_TEAM]))
    assert model["name"] == "bob"
    assert model["admin"] is False
    assert model["groups"] == ["ad-portal", "nf-osc"]
    state = model["auth_state"]
    assert state["userid"] == "3400002"
    assert state["user_name"] == "Bob"
    assert state["email"] == "Bob@example.org"
    assert state["teams"] == [COMMUNITY_TEAM, OTHER_COMMUNITY_TEAM]
    assert state["access_token"] == "access-1" and state["refresh_token"] == "refresh-1"


async def test_admin_team_member_is_an_operator_not_a_jupyterhub_admin(tmp_path):
    """Finding 6: JupyterHub's admin role reads every auth_state, makes tokens for anyone and
    opens any notebook. Admin-team members are allowed without a community and put in the
    "admins" group, which holds the community-operator role (jupyterhub_config.py); they are
    not JupyterHub admins."""
    auth = make_authenticator(tmp_path)
    model = await login(auth, userinfo(teams=[ADMIN_TEAM]))
    assert model["admin"] is False
    assert model["groups"] == ["admins"]


async def test_break_glass_admins_are_full_admins_and_audited(tmp_path, monkeypatch):
    """Full JupyterHub admin only for the names a deployment lists (SNH_BREAK_GLASS_ADMINS,
    i.e. admin_users), and every such sign-in is in the audit log."""
    audited: list[tuple] = []
    monkeypatch.setattr(
        "authenticator.synapse.audit.record", lambda *a, **kw: audited.append((a, kw))
    )
    auth = make_authenticator(tmp_path, admin_users={"alice"})
    model = await login(auth, userinfo("alice", "3400001", teams=[COMMUNITY_TEAM]))
    assert model["admin"] is True
    [(args, fields)] = audited
    assert args[0] == "break_glass" and fields == {"user": "alice", "reason": "sign-in"}


async def test_non_member_is_refused_with_the_team_page(tmp_path):
    auth = make_authenticator(tmp_path, admin_contact="help@example.org")
    model = await authenticate(auth, userinfo("mallory", "3400003", ["3500099"]))
    with pytest.raises(SignInError) as refused:
        await auth.check_allowed(model["name"], model)
    assert refused.value.status_code == 403
    html = refused.value.jupyterhub_html_message
    for team in (COMMUNITY_TEAM, OTHER_COMMUNITY_TEAM, ADMIN_TEAM):
        assert f"https://www.synapse.org/#!Team:{team}" in html
    assert "AD Knowledge Portal" in html and "help@example.org" in html
    assert "3500099" not in html


async def test_a_refused_non_member_binds_no_hub_name(tmp_path):
    """Finding 7: the refused sign-in of a non-member reserved the hub name "bob" for their
    Synapse account, so that the real bob (a member, with the same user name after a rename
    on Synapse) would have been refused as "name taken". Nothing is bound before the gate."""
    auth = make_authenticator(tmp_path)
    model = await authenticate(auth, userinfo("bob", "3400099", ["3500099"]))
    with pytest.raises(SignInError):
        await auth.check_allowed(model["name"], model)
    assert auth.identities.lookup("3400099") is None
    assert auth.identities.owner_of("bob") is None
    member = await login(auth, userinfo("bob", "3400002"))
    assert member["name"] == "bob"


# -- userid binding ----------------------------------------------------------------------


async def test_renamed_synapse_user_keeps_their_hub_user(tmp_path):
    auth = make_authenticator(tmp_path)
    await login(auth, userinfo("alice", "3400001"))
    model = await login(auth, userinfo("alice_new", "3400001"))
    assert model["name"] == "alice"
    assert model["auth_state"]["user_name"] == "alice_new"


async def test_new_holder_of_a_freed_name_cannot_take_over(tmp_path):
    auth = make_authenticator(tmp_path)
    await login(auth, userinfo("alice", "3400001"))
    await login(auth, userinfo("alice_new", "3400001"))  # alice renamed, "alice" is free
    with pytest.raises(SignInError, match="another Synapse user"):
        await login(auth, userinfo("alice", "3999999"))


async def test_deleting_the_hub_user_frees_the_name(tmp_path):
    auth = make_authenticator(tmp_path)
    await login(auth, userinfo("alice", "3400001"))

    class Deleted:
        name = "alice"

    forgotten: list[str] = []
    auth.forget_on_delete = [forgotten.append]  # e.g. the SSH keys page's table
    auth.delete_user(Deleted())
    model = await login(auth, userinfo("alice", "3999999"))
    assert model["name"] == "alice" and model["auth_state"]["userid"] == "3999999"
    # what else the hub kept under the name goes with it: the next holder gets none of it
    assert forgotten == ["alice"]


# -- refresh -----------------------------------------------------------------------------


async def logged_in_user(auth, **state_changes) -> FakeUser:
    model = await login(auth, userinfo())
    return FakeUser(model["name"], {**model["auth_state"], **state_changes})


async def test_refresh_with_a_fresh_token_only_rechecks_teams(tmp_path):
    auth = make_authenticator(tmp_path)
    user = await logged_in_user(auth)
    synapse = FakeSynapse(auth, teams=[COMMUNITY_TEAM, ADMIN_TEAM])
    model = await auth.refresh_user(user)
    assert synapse.token_calls == 0 and synapse.userinfo_calls == 1
    assert model["admin"] is False and model["groups"] == ["ad-portal", "admins"]
    assert user.state["teams"] == [ADMIN_TEAM, COMMUNITY_TEAM]


async def test_refresh_rotates_a_token_near_expiry(tmp_path):
    auth = make_authenticator(tmp_path)
    user = await logged_in_user(auth)
    synapse = FakeSynapse(auth)
    now = user.state["expires_at"] - 60  # one minute left
    auth.now = lambda: now
    model = await auth.refresh_user(user)
    assert synapse.token_calls == 1
    assert model["auth_state"]["access_token"] == "access-2"
    assert user.state["refresh_token"] == "refresh-2"  # saved, rotated
    assert user.state["expires_at"] == now + 86400


async def test_refresh_rotates_after_a_401(tmp_path):
    auth = make_authenticator(tmp_path)
    user = await logged_in_user(auth)
    synapse = FakeSynapse(auth)
    synapse.valid_access.clear()  # revoked or expired early
    now = user.state["refreshed_at"] + 120
    auth.now = lambda: now
    model = await auth.refresh_user(user)
    assert model["auth_state"]["access_token"] == "access-2"
    assert synapse.userinfo_calls == 2


async def test_user_who_left_every_team_is_refused_at_refresh(tmp_path, monkeypatch):
    auth = make_authenticator(tmp_path)
    user = await logged_in_user(auth)
    FakeSynapse(auth, teams=[])

    async def nothing(*args, **kwargs):
        return []

    monkeypatch.setattr("authenticator.synapse.end_access", nothing)
    auth.httpfetch = nothing  # the revocation (see the trust tests below)
    assert await auth.refresh_user(user) is False


async def test_used_refresh_token_means_sign_in_again(tmp_path):
    auth = make_authenticator(tmp_path)
    user = await logged_in_user(auth)
    synapse = FakeSynapse(auth)
    synapse.valid_refresh.clear()
    now = user.state["expires_at"] + 1
    auth.now = lambda: now
    synapse.valid_access.clear()
    assert await auth.refresh_user(user) is False


@pytest.mark.parametrize("status", [500, 503, 599, 429])
async def test_synapse_outage_keeps_the_session(tmp_path, status):
    auth = make_authenticator(tmp_path)
    user = await logged_in_user(auth)
    synapse = FakeSynapse(auth)
    synapse.fail_with = SynapseCallError("userinfo request", status)
    now = user.state["expires_at"] - 60
    auth.now = lambda: now
    assert await auth.refresh_user(user) is True
    assert user.state["refresh_token"] == "refresh-1"


async def test_concurrent_refreshes_share_one_rotation(tmp_path):
    """Synapse refresh tokens are single use: two racing rotations would log the user out."""
    auth = make_authenticator(tmp_path)
    user = await logged_in_user(auth)
    synapse = FakeSynapse(auth)
    now = user.state["expires_at"] - 60
    auth.now = lambda: now
    results = await asyncio.gather(*(auth.refresh_user(user) for _ in range(5)))
    assert all(isinstance(r, dict) for r in results), results
    assert synapse.token_calls == 1
    assert {r["auth_state"]["access_token"] for r in results} == {"access-2"}


async def test_spawn_requests_force_a_rotation(tmp_path, monkeypatch):
    auth = make_authenticator(tmp_path)
    user = await logged_in_user(auth)
    synapse = FakeSynapse(auth)
    now = user.state["refreshed_at"] + 3600
    auth.now = lambda: now  # fresh token, an hour old
    monkeypatch.setattr(SynapseOAuthenticator, "_is_spawn_request", staticmethod(bool))
    model = await auth.refresh_user(user, handler=object())
    assert synapse.token_calls == 1 and model["auth_state"]["access_token"] == "access-2"


def test_refresh_request_params_use_the_configured_client_auth(tmp_path):
    auth = make_authenticator(tmp_path, basic_auth=False)
    params = auth._refresh_request_params("r")
    assert params == {
        "grant_type": "refresh_token",
        "refresh_token": "r",
        "client_id": "client",
        "client_secret": "secret",
    }
    assert urllib.parse.urlencode(params)


# -- the trust boundary (issue: access follows team membership everywhere) ----------------


async def test_rotated_tokens_are_saved_the_moment_synapse_returns_them(tmp_path):
    """Finding 2: Synapse refresh tokens are single use. When the rotation succeeds but the
    userinfo call after it fails, the new tokens must already be saved: the next refresh
    then presents the new refresh token instead of the spent one."""
    auth = make_authenticator(tmp_path)
    user = await logged_in_user(auth)
    synapse = FakeSynapse(auth)
    now = user.state["expires_at"] - 60
    auth.now = lambda: now

    async def failing_userinfo(access_token):
        raise SynapseCallError("userinfo request", 503)

    auth._userinfo = failing_userinfo
    assert await auth.refresh_user(user) is True  # an outage keeps the session ...
    assert user.state["refresh_token"] == "refresh-2"  # ... and the rotated tokens
    assert user.state["access_token"] == "access-2"
    assert user.state["expires_at"] == now + 86400
    auth._userinfo = synapse.userinfo
    auth.now = lambda: now + 86400 - 60  # due again
    model = await auth.refresh_user(user)
    assert model["auth_state"]["access_token"] == "access-3"  # refresh-2 was accepted


async def test_losing_every_team_ends_access_revokes_and_forgets(tmp_path, monkeypatch):
    """Finding 1 and 5: a user in no allowed team loses everything at the refresh that sees
    it: the hub's side (servers, API tokens, sessions, admin: `authenticator.access`), the
    Synapse tokens revoked at Synapse (JSON body, client basic auth) and cleared, audited."""
    auth = make_authenticator(tmp_path)
    user = await logged_in_user(auth)
    FakeSynapse(auth, teams=[])
    ended: list[tuple] = []
    revoked: list[dict] = []
    audited: list[tuple] = []

    async def fake_end_access(u, handler):
        ended.append((u, handler))
        return ["default server stopped", "2 API/OAuth tokens deleted, browser sessions ended"]

    async def fake_httpfetch(url, label, method, headers, body, parse_json, **kwargs):
        revoked.append({"url": url, "label": label, "headers": headers, "body": json.loads(body)})

    monkeypatch.setattr("authenticator.synapse.end_access", fake_end_access)
    monkeypatch.setattr(
        "authenticator.synapse.audit.record", lambda *a, **kw: audited.append((a, kw))
    )
    auth.httpfetch = fake_httpfetch
    handler = object()
    assert await auth.refresh_user(user, handler=handler) is False
    assert ended == [(user, handler)]
    [call] = revoked
    assert call["url"].endswith("/oauth2/revoke")
    assert call["body"] == {"token": "refresh-1", "token_type_hint": "refresh_token"}
    basic = call["headers"]["Authorization"].split()[1]
    assert base64.b64decode(basic).decode() == f"{auth.client_id}:{auth.client_secret}"
    assert user.state is None  # forgotten
    [(args, fields)] = audited
    assert args[0] == "access_ended" and fields["user"] == "alice"
    assert "default server stopped" in fields["reason"]


def test_every_start_and_every_token_request_refresh_strictly(tmp_path):
    """Starting a server (form or REST) re-checks membership live; on JupyterHub 6.1+ a
    failed refresh refuses token requests too (auth_refresh_strict), which 5.2 always did."""
    auth = make_authenticator(tmp_path)
    assert auth.refresh_pre_spawn is True
    if auth.has_trait("auth_refresh_strict"):
        assert auth.auth_refresh_strict is True


@pytest.mark.parametrize("listing", ["admin_users", "allowed_users"])
async def test_a_name_listed_user_in_no_team_keeps_access_at_refresh(
    tmp_path, monkeypatch, listing
):
    """Break-glass admins (admin_users) and allowed_users may enter without a team: a refresh
    must not end their access (the lockout is for people the gate would refuse)."""
    auth = make_authenticator(tmp_path, **{listing: {"alice"}})
    user = await logged_in_user(auth)
    FakeSynapse(auth, teams=[])
    ended = []

    async def fake_end_access(u, handler):
        ended.append(u)
        return []

    monkeypatch.setattr("authenticator.synapse.end_access", fake_end_access)
    model = await auth.refresh_user(user)
    assert isinstance(model, dict) and ended == []


async def test_after_a_team_configuration_change_the_user_signs_in_again(tmp_path, monkeypatch):
    """Synapse answers the team claim with the teams asked at sign-in, also for rotated
    tokens. A team added to the configuration since then is unknown to the answer: that is
    no evidence of a lost membership, so the user signs in again instead of losing access."""
    auth = make_authenticator(tmp_path)
    user = await logged_in_user(auth)
    assert user.state["requested_teams"] == sorted(auth.all_team_ids)
    FakeSynapse(auth, teams=[])  # the old claim request's answer: none of today's teams
    auth.allowed_teams = {**auth.allowed_teams, "3599999": "A new community"}
    ended = []

    async def fake_end_access(u, handler):
        ended.append(u)
        return []

    monkeypatch.setattr("authenticator.synapse.end_access", fake_end_access)
    assert await auth.refresh_user(user) is False
    assert ended == [] and user.state is not None  # nothing revoked or cleared
