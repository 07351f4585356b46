"""SynapseOAuthenticator: Synapse's OIDC code flow, gated on Synapse team membership.

A thin provider over oauthenticator's generic base: Synapse's endpoints derive from one
issuer URL, the ``claims`` request names the configured teams, and the hooks of the base
class apply the team gate, the admin teams, JupyterHub groups and the userid binding.
``refresh_user`` is Synapse-specific because Synapse rotates refresh tokens on every use
(a second use of the same refresh token fails), so refreshes must be serialised per user and
their result saved before the next one may start.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any
from urllib.parse import urlencode

from jupyterhub.crypto import decrypt
from jupyterhub.utils import url_path_join
from oauthenticator.oauth2 import OAuthCallbackHandler, OAuthenticator, OAuthLogoutHandler
from tornado import web
from tornado.httpclient import HTTPClientError
from traitlets import Dict, Float, List, Set, Unicode, default, observe, validate

from operations import audit

from . import errors
from .access import end_access
from .claims import (
    ClaimsError,
    SynapseIdentity,
    allowed_teams_of,
    claims_parameter,
    groups_for_teams,
    identity_from_userinfo,
    normalize_username,
)
from .identities import IdentityStore, NameTaken

PRODUCTION_ISSUER = "https://repo-prod.prod.sagebase.org/auth/v1"
PRODUCTION_SIGNIN = "https://signin.synapse.org"


class SynapseCallError(Exception):
    """A call to Synapse's OAuth endpoints that did not succeed.

    ``transient`` separates "Synapse is unwell, try later" (timeouts, 5xx, 429) from "this
    grant or token is no good" (4xx), which is what decides between keeping a session and
    asking the user to sign in again.
    """

    def __init__(self, call: str, status: int, error: str = "", description: str = "") -> None:
        super().__init__(f"{call}: HTTP {status} {error} {description}".strip())
        self.call = call
        self.status = status
        self.error = error
        self.description = description

    @property
    def transient(self) -> bool:
        return self.status == 599 or self.status >= 500 or self.status == 429


class SynapseCallbackHandler(OAuthCallbackHandler):
    """The OAuth callback, with pages a user can act on instead of bare 400s."""

    def _sign_in_url(self) -> str:
        return url_path_join(self.hub.base_url, "login")

    def check_arguments(self) -> None:
        error = self.get_argument("error", "")
        if error:
            description = self.get_argument("error_description", "")
            self.log.warning("Synapse sign-in returned error=%s (%s)", error, description)
            if error == "access_denied":
                raise errors.consent_denied(self._sign_in_url())
            raise errors.provider_error(self._sign_in_url(), error, description)
        if not self.get_argument("code", ""):
            self.log.warning("OAuth callback without a code")
            raise errors.stale_attempt(self._sign_in_url())
        try:
            self.check_state()
        except web.HTTPError as e:
            self.log.warning("Refusing OAuth callback: %s", e.log_message)
            raise errors.stale_attempt(self._sign_in_url()) from None


class SynapseLogoutHandler(OAuthLogoutHandler):
    """Logout also revokes the user's Synapse tokens at Synapse and forgets them here.

    A Synapse refresh token lives 180 days; left behind at logout it would stay usable by
    whoever later reads the hub's database or a backup of it. A user who logs out while a
    server of theirs still runs keeps them: that server logs in to Synapse with them (a long
    job writing its results), and they are revoked with the rest when access ends.
    """

    async def default_handle_logout(self) -> None:
        user = self.current_user  # before the login cookie is cleared
        await super().default_handle_logout()
        if user is None or getattr(user, "kind", "user") != "user":
            return
        if any(spawner.active for spawner in user.spawners.values()):
            self.log.info("Keeping the Synapse tokens of %s: a server still runs", user.name)
            return
        await self.authenticator.forget_tokens(user, reason="logout")


class SynapseOAuthenticator(OAuthenticator):
    """Sign in with Synapse; only members of the configured Synapse teams get in."""

    login_service = "Synapse"
    callback_handler = SynapseCallbackHandler
    logout_handler = SynapseLogoutHandler
    user_auth_state_key = "synapse_userinfo"

    issuer = Unicode(
        PRODUCTION_ISSUER,
        config=True,
        help="""
        Synapse's OIDC issuer. The token, userinfo and revocation endpoints are derived from
        it (``<issuer>/oauth2/token`` etc.), so pointing the hub at Synapse staging or at the
        local stand-in is a matter of this setting and :attr:`signin_url` alone.
        Environment: ``SYNAPSE_ISSUER``.
        """,
    )

    signin_url = Unicode(
        PRODUCTION_SIGNIN,
        config=True,
        help="""
        Synapse's sign-in page, the OAuth authorization endpoint a browser is sent to.
        Environment: ``SYNAPSE_SIGNIN_URL``.
        """,
    )

    @validate("issuer", "signin_url")
    def _validate_url(self, proposal: dict[str, Any]) -> str:
        value = proposal["value"].rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError(
                f"SynapseOAuthenticator.{proposal['trait'].name} must be an http(s) URL, "
                f"got {value!r}"
            )
        return value

    revoke_url = Unicode(
        config=True,
        help="Synapse's token revocation endpoint; default ``<issuer>/oauth2/revoke``.",
    )

    @default("authorize_url")
    def _authorize_url_default(self) -> str:
        return self.signin_url

    @default("token_url")
    def _token_url_default(self) -> str:
        return f"{self.issuer}/oauth2/token"

    @default("userdata_url")
    def _userdata_url_default(self) -> str:
        return f"{self.issuer}/oauth2/userinfo"

    @default("revoke_url")
    def _revoke_url_default(self) -> str:
        return f"{self.issuer}/oauth2/revoke"

    @default("scope")
    def _scope_default(self) -> list[str]:
        # view/download/modify: what synapseclient needs inside the notebook;
        # offline_access: Synapse issues a refresh token only with it.
        return ["openid", "view", "download", "modify", "offline_access"]

    allowed_teams = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="""
        Synapse teams whose members may sign in: team id -> display name (the name is shown
        on the refusal page, with a link to the team). ``jupyterhub_config.py`` fills it from
        the communities file. An empty value stops the hub at start-up: nobody could sign in.
        """,
    ).tag(allow_config=True)

    admin_teams = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="""
        Synapse teams whose members operate the hub (team id -> display name). They are not
        JupyterHub admins: ``team_groups`` puts them in a group that holds the deployment's
        operator role (``jupyterhub_config.py``: see and stop every server, no one else's
        credentials). Membership follows the team at every sign-in and refresh. Members of
        admin teams may sign in even if they are in no community team.
        """,
    )

    forget_on_delete = List(
        config=True,
        help="""
        Callables taking a hub user name, called when that user is deleted: what the hub
        keeps of the user outside JupyterHub's own tables must go with the name, which the
        identity binding frees for whichever Synapse account signs in next (the SSH keys
        page's table, ``operations.ssh_keys.SshKeyStore.forget``: its keys would otherwise
        open the next holder's servers).
        """,
    )

    first_handlers = List(
        config=True,
        help="""
        ``(pattern, handler, kwargs)`` routes JupyterHub must try before its own. JupyterHub
        puts an authenticator's handlers at the head of its table (``init_handlers``), and
        ``extra_handlers`` after its own, so this is the only way to put the hub's rules in
        front of one of JupyterHub's handlers (``spawner.server_api``: ``user_options``
        validated at ``PUT`` and ``PATCH``, JupyterHub 6's server names on 5.2 too).
        """,
    )

    break_glass_admins = Set(
        Unicode(),
        config=True,
        help="""
        Hub user names that get full JupyterHub admin (break-glass: the deployment's own
        operators, for what the operator role cannot do). Empty by default. Every sign-in of
        such a user is audited (``break_glass``). ``jupyterhub_config.py`` also declares the
        ``admin`` role with exactly these users, so that a name taken off this list loses
        admin at the next start of the hub, not only at its next sign-in (JupyterHub's
        ``admin_users`` only ever adds admins). Names in ``admin_users`` count as well.
        """,
    )

    team_groups = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="""
        JupyterHub group for each team id (e.g. the community's id). Group membership is
        managed by the authenticator (``manage_groups``) and follows team membership at every
        sign-in and refresh. Teams without an entry get the group ``team-<id>``.
        """,
    )

    @validate("allowed_teams", "admin_teams", "team_groups")
    def _validate_team_ids(self, proposal: dict[str, Any]) -> dict[str, str]:
        value = {str(k): v for k, v in proposal["value"].items()}
        bad = [k for k in value if not k.isdigit()]
        if bad:
            raise ValueError(
                f"SynapseOAuthenticator.{proposal['trait'].name}: team ids must be digits, "
                f"got {bad}"
            )
        return value

    identity_db_url = Unicode(
        "sqlite:///synapse-identities.sqlite",
        config=True,
        help="""
        Database of the userid -> hub user binding (see ``authenticator/identities.py``): a
        Synapse user who renames themselves keeps their hub user, and the next holder of a
        freed Synapse user name cannot take it over. Keep it wherever the hub database is
        kept; with PostgreSQL, use the hub's ``db_url`` (the table is ``synapse_identities``).
        """,
    )

    access_token_refresh_margin = Float(
        3600,
        config=True,
        help="""
        Seconds before the access token's expiry (Synapse: 24 h after issue) at which a
        refresh rotates the tokens. Tokens are also rotated before every spawn so a notebook
        starts with a full day of token life.
        """,
    )

    min_rotation_interval = Float(
        60,
        config=True,
        help="""
        Tokens rotated less than this many seconds ago are not rotated again: several
        requests arriving together (a page and its API calls) share one rotation.
        """,
    )

    admin_contact = Unicode(
        "",
        config=True,
        help="Who a refused user should contact (shown on the refusal page), e.g. an email.",
    )

    extra_claims = List(
        Unicode(),
        config=True,
        help="Further Synapse claims to request (e.g. ``orcid``, ``is_certified``).",
    )

    @default("username_claim")
    def _username_claim_default(self) -> str:
        return "user_name"

    @default("enable_auth_state")
    def _enable_auth_state_default(self) -> bool:
        return True

    @default("manage_groups")
    def _manage_groups_default(self) -> bool:
        return True

    @default("refresh_pre_spawn")
    def _refresh_pre_spawn_default(self) -> bool:
        # Every start (form or REST) re-checks team membership live at Synapse.
        return True

    if "auth_refresh_strict" in OAuthenticator.class_trait_names():  # JupyterHub 6.1+

        @default("auth_refresh_strict")
        def _auth_refresh_strict_default(self) -> bool:
            # A failed refresh refuses token requests too (6.1 made the default lenient).
            # Not relied on alone: a lost membership also ends the user's access outright
            # (`_end_access`), which works on 5.2 as well.
            return True

    @default("http_request_kwargs")
    def _http_request_kwargs_default(self) -> dict[str, Any]:
        # Without timeouts a hung Synapse would hang sign-in pages for tornado's 20 s
        # default and more on connect; these make the "Synapse is not answering" page prompt.
        return {"connect_timeout": 10.0, "request_timeout": 20.0}

    @default("extra_authorize_params")
    def _extra_authorize_params_default(self) -> dict[str, str]:
        return {"claims": self._claims_parameter()}

    @observe("allowed_teams", "admin_teams", "extra_claims")
    def _update_claims(self, change: dict[str, Any]) -> None:
        self.extra_authorize_params = {
            **self.extra_authorize_params,
            "claims": self._claims_parameter(),
        }

    def _claims_parameter(self) -> str:
        parameter = json.loads(claims_parameter(self.all_team_ids))
        for part in parameter.values():
            part.update({name: None for name in self.extra_claims})
        return json.dumps(parameter, separators=(",", ":"), sort_keys=True)

    now = staticmethod(time.time)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._refresh_locks: dict[str, asyncio.Lock] = {}
        self._identities: IdentityStore | None = None
        self._background: set[asyncio.Future[Any]] = set()

    # -- configuration ------------------------------------------------------------------

    @property
    def all_team_ids(self) -> set[str]:
        """Every team that opens the hub: community teams and admin teams."""
        return set(self.allowed_teams) | set(self.admin_teams)

    @property
    def identities(self) -> IdentityStore:
        if self._identities is None:
            self._identities = IdentityStore(self.identity_db_url)
        return self._identities

    def check_allow_config(self) -> None:
        if not self.all_team_ids:
            raise ValueError(
                "SynapseOAuthenticator.allowed_teams is empty: nobody could sign in. "
                "Configure at least one community (team_id) in the communities file."
            )

    def _sign_in_url(self) -> str:
        prefix = getattr(self.parent, "hub_prefix", "/hub/")
        return url_path_join(prefix, "login")

    # -- calls to Synapse -----------------------------------------------------------------

    async def _call(self, call: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """One JSON call to Synapse, with every failure turned into :class:`SynapseCallError`."""
        try:
            answer = await self.httpfetch(url, label=call, **kwargs)
        except HTTPClientError as e:
            error = description = ""
            if e.response is not None and e.response.body:
                try:
                    body = json.loads(e.response.body)
                    error = str(body.get("error", ""))
                    description = str(body.get("error_description") or body.get("reason", ""))
                except (ValueError, AttributeError):
                    pass
            raise SynapseCallError(call, e.code, error, description) from None
        except (TimeoutError, OSError) as e:
            self.log.error("Synapse %s failed: %s", call, e)
            raise SynapseCallError(call, 599, "unreachable", str(e)) from None
        if not isinstance(answer, dict):
            raise SynapseCallError(call, 502, "not_json", "answer is not a JSON object")
        return answer

    async def _token_request(self, params: dict[str, Any]) -> dict[str, Any]:
        params = {k: v for k, v in params.items() if k != "data" and v is not None}
        token_info = await self._call(
            "token request",
            self.token_url,
            method="POST",
            headers=self.build_token_info_request_headers(),
            body=urlencode(params),
            validate_cert=self.validate_server_cert,
        )
        if "access_token" not in token_info:
            raise SynapseCallError("token request", 502, "no_access_token")
        token_info.setdefault("token_type", "Bearer")
        return token_info

    async def _userinfo(self, access_token: str) -> dict[str, Any]:
        return await self._call(
            "userinfo request",
            self.userdata_url,
            method="GET",
            headers=self.build_userdata_request_headers(access_token, "Bearer"),
            validate_cert=self.validate_server_cert,
        )

    def _login_failure(self, e: SynapseCallError, what: str) -> errors.SignInError:
        self.log.error("Synapse sign-in failed at the %s: %s", e.call, e)
        if e.transient:
            return errors.synapse_unavailable(self._sign_in_url(), what)
        if e.error in ("invalid_grant", "invalid_request") or e.status in (400, 401):
            return errors.stale_attempt(self._sign_in_url())
        return errors.unexpected_answer(self._sign_in_url())

    # -- oauthenticator hooks (sign-in) ---------------------------------------------------

    async def get_token_info(self, handler: Any, params: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._token_request(params)
        except SynapseCallError as e:
            raise self._login_failure(e, "exchanging the sign-in code") from None

    async def token_to_user(self, token_info: dict[str, Any]) -> dict[str, Any]:
        try:
            userinfo = await self._userinfo(token_info["access_token"])
        except SynapseCallError as e:
            raise self._login_failure(e, "reading your Synapse profile") from None
        try:
            identity_from_userinfo(userinfo)
        except ClaimsError as e:
            self.log.error("Synapse userinfo rejected: %s", e)
            raise errors.unexpected_answer(self._sign_in_url()) from None
        return userinfo

    def user_info_to_username(self, user_info: dict[str, Any]) -> str:
        return normalize_username(identity_from_userinfo(user_info).user_name)

    def build_auth_state_dict(
        self, token_info: dict[str, Any], user_info: dict[str, Any]
    ) -> dict[str, Any]:
        identity = identity_from_userinfo(user_info)
        now = self.now()
        scope = token_info.get("scope") or self.scope
        return {
            "access_token": token_info["access_token"],
            "refresh_token": token_info.get("refresh_token"),
            "id_token": token_info.get("id_token"),
            "token_type": token_info.get("token_type", "Bearer"),
            "scope": scope.split() if isinstance(scope, str) else list(scope),
            "expires_at": now + float(token_info.get("expires_in") or 24 * 3600),
            "refreshed_at": now,
            "userid": identity.userid,
            "user_name": identity.user_name,
            "email": identity.email,
            "teams": list(identity.teams),
            # the team claim's answer covers the teams asked at sign-in (kept by refreshes)
            "requested_teams": sorted(self.all_team_ids),
            self.user_auth_state_key: user_info,
        }

    async def update_auth_model(self, auth_model: dict[str, Any]) -> dict[str, Any]:
        state = auth_model["auth_state"]
        if not self._may_enter(auth_model["name"], state["teams"]):
            # check_allowed refuses this sign-in next: bind no hub name to someone who is not
            # let in (the binding would reserve the name against its rightful owner)
            return auth_model
        try:
            binding = self.identities.resolve(
                state["userid"], auth_model["name"], state["user_name"]
            )
        except NameTaken as e:
            self.log.warning(
                "Refusing Synapse user %s (%s): hub user %r is bound to Synapse user %s",
                state["user_name"],
                state["userid"],
                e.hub_username,
                e.owner_userid,
            )
            raise errors.name_taken(state["user_name"], e.hub_username) from None
        if binding.hub_username != auth_model["name"]:
            self.log.info(
                "Synapse user %s renamed to %r: signing in as bound hub user %r",
                state["userid"],
                state["user_name"],
                binding.hub_username,
            )
        auth_model["name"] = binding.hub_username
        auth_model["admin"] = self._is_admin(auth_model["name"], state["teams"])
        if auth_model["admin"]:
            self._audit_break_glass(auth_model["name"], "sign-in")
        return auth_model

    def _is_admin(self, name: str, teams: list[str]) -> bool:
        """Full JupyterHub admin: only the break-glass names (and ``admin_users``).

        Members of admin teams are not JupyterHub admins: JupyterHub's admin role includes
        ``admin:auth_state``, ``tokens`` and ``access:servers``, with which an admin reads or
        uses every analyst's Synapse token. They get the deployment's operator role through
        their group (``team_groups``) instead.
        """
        return name in self.break_glass_admins or name in self.admin_users

    def _audit_break_glass(self, name: str, when: str) -> None:
        self.log.warning("Break-glass JupyterHub admin %s (%s)", name, when)
        audit.record("break_glass", audit.Actor("admin", name), user=name, reason=when)

    async def get_user_groups(self, auth_state: dict[str, Any]) -> set[str]:
        mapping = {t: self.team_groups.get(t, f"team-{t}") for t in self.all_team_ids}
        return set(groups_for_teams(auth_state.get("teams", []), mapping))

    def _may_enter(self, username: str, teams: list[str]) -> bool:
        """In an allowed team, or listed by name (allowed_users, break-glass admins)."""
        return bool(allowed_teams_of(teams, self.all_team_ids)) or (
            username in self.allowed_users or self._is_admin(username, teams)
        )

    async def check_allowed(self, username: str, auth_model: dict[str, Any]) -> bool:
        if auth_model is None:
            return True
        if self._may_enter(username, auth_model["auth_state"]["teams"]):
            return True
        state = auth_model["auth_state"]
        self.log.warning(
            "Refusing Synapse user %s (%s): in none of the allowed teams %s",
            state["user_name"],
            state["userid"],
            sorted(self.all_team_ids),
        )
        raise errors.not_a_member(
            state["user_name"],
            {**self.allowed_teams, **self.admin_teams},
            admin_contact=self.admin_contact,
        )

    def delete_user(self, user: Any) -> None:
        """A deleted hub user frees its name for whichever Synapse account signs in next,
        and its Synapse tokens are revoked (the hub forgets them with the user)."""
        encrypted = getattr(user, "encrypted_auth_state", None)
        super().delete_user(user)
        if self.identities.unbind(user.name):
            self.log.info("Removed the Synapse identity binding of deleted user %s", user.name)
        for forget in self.forget_on_delete:
            forget(user.name)
        if encrypted:
            # delete_user is synchronous; the revocation is an HTTP call, so it runs after
            task = asyncio.ensure_future(self._revoke_encrypted(encrypted, user.name))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _revoke_encrypted(self, encrypted: bytes, name: str) -> None:
        try:
            state = await decrypt(encrypted)
        except Exception:
            self.log.exception("Could not read the auth state of deleted user %s", name)
            return
        if state and await self.revoke_tokens(state, name):
            self.log.info("Synapse tokens of deleted user %s revoked", name)

    def get_handlers(self, app: Any) -> list[Any]:
        """oauthenticator's sign-in routes, then `first_handlers` (see its help)."""
        return [*super().get_handlers(app), *self.first_handlers]

    # -- refresh --------------------------------------------------------------------------

    @staticmethod
    def _is_spawn_request(handler: Any) -> bool:
        """JupyterHub refreshes auth right before a spawn but does not say so to refresh_user.

        The spawn handlers are the only callers that start servers, so their presence is the
        signal to rotate: the notebook then starts with a full day of token life.
        """
        from jupyterhub.apihandlers.users import UserServerAPIHandler
        from jupyterhub.handlers.pages import SpawnHandler

        return isinstance(handler, (SpawnHandler, UserServerAPIHandler))

    async def refresh_user(self, user: Any, handler: Any = None, **kwargs: Any) -> Any:
        """Rotate tokens when needed and re-check team membership live.

        Returns False (sign in again) when the refresh token is refused or the user is in no
        allowed team any more; True (keep the session) when Synapse is unreachable, so an
        outage does not sign everybody out; else the new auth model, already saved.
        """
        lock = self._refresh_locks.setdefault(user.name, asyncio.Lock())
        async with lock:
            return await self._refresh_locked(
                user, force=self._is_spawn_request(handler), handler=handler
            )

    async def refresh_tokens(self, user: Any, *, force: bool = False) -> Any:
        """Refresh outside a request, e.g. for a running server whose token nears expiry."""
        lock = self._refresh_locks.setdefault(user.name, asyncio.Lock())
        async with lock:
            return await self._refresh_locked(user, force=force)

    def _needs_rotation(self, state: dict[str, Any], force: bool) -> bool:
        now = self.now()
        if now - state.get("refreshed_at", 0) < self.min_rotation_interval:
            return False
        return force or state.get("expires_at", 0) - now < self.access_token_refresh_margin

    def _refresh_request_params(self, refresh_token: str) -> dict[str, str]:
        """RFC 6749 section 6; client credentials in the body unless HTTP Basic is used.

        (oauthenticator has this only from 17.1 on.)
        """
        params = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if not self.basic_auth:
            params.update(client_id=self.client_id, client_secret=self.client_secret)
        return params

    async def _rotate(self, user: Any, state: dict[str, Any]) -> dict[str, Any] | None:
        """Exchange the refresh token; None if Synapse is unreachable (keep what we have)."""
        if not state.get("refresh_token"):
            raise SynapseCallError("token refresh", 400, "no_refresh_token")
        params = self._refresh_request_params(state["refresh_token"])
        try:
            token_info = await self._token_request(params)
        except SynapseCallError as e:
            if e.transient:
                self.log.warning("Could not refresh tokens of %s, keeping them: %s", user.name, e)
                return None
            raise
        self.log.info("Rotated Synapse tokens of %s", user.name)
        return token_info

    async def _refresh_locked(self, user: Any, *, force: bool, handler: Any = None) -> Any:
        state = await user.get_auth_state()
        if not state or not state.get("access_token") or not state.get("userid"):
            self.log.info("No Synapse auth state for %s: sign-in required", user.name)
            return False
        token_info: dict[str, Any] | None = None
        try:
            if self._needs_rotation(state, force):
                token_info = await self._rotate(user, state)
                state = await self._keep_rotated(user, state, token_info)
            access_token = (token_info or state)["access_token"]
            try:
                userinfo = await self._userinfo(access_token)
            except SynapseCallError as e:
                if e.status != 401:
                    raise
                # Expired or revoked access token — even one rotated a moment ago, if
                # Synapse's clock passed its expiry in between: one rotation (the refresh
                # token that came with it is valid), then one more try. Only a token that
                # userinfo accepted is ever handed to a notebook.
                token_info = await self._rotate(user, state)
                if token_info is None:
                    return True
                state = await self._keep_rotated(user, state, token_info)
                userinfo = await self._userinfo(token_info["access_token"])
            identity = identity_from_userinfo(userinfo)
        except SynapseCallError as e:
            if e.transient:
                self.log.warning("Synapse unreachable while refreshing %s: %s", user.name, e)
                return True
            self.log.info("Synapse refused the tokens of %s (%s): sign-in required", user.name, e)
            return False
        except ClaimsError as e:
            self.log.error("Synapse userinfo for %s rejected at refresh: %s", user.name, e)
            return True

        if identity.userid != state["userid"]:
            self.log.error(
                "Refusing refresh of %s: token belongs to Synapse user %s, not %s",
                user.name,
                identity.userid,
                state["userid"],
            )
            return False
        if not self._may_enter(user.name, identity.teams):
            asked = set(state.get("requested_teams") or self.all_team_ids)
            if not self.all_team_ids <= asked:
                # Synapse answers the team claim with the teams asked at sign-in; the
                # communities file has changed since: a fresh sign-in asks about them all.
                self.log.info("Teams of %s asked before a configuration change", user.name)
                return False
            self.log.warning(
                "Synapse user %s (%s) is no longer in any allowed team: ending their access",
                identity.user_name,
                identity.userid,
            )
            await self._end_access(user, handler, reason="no longer in any allowed team")
            return False
        return await self._save_refreshed(user, state, token_info, userinfo, identity)

    async def _keep_rotated(
        self, user: Any, state: dict[str, Any], token_info: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Save rotated tokens the moment Synapse returns them.

        Synapse refresh tokens are single use: if the userinfo call that follows a rotation
        fails (5xx, timeout, bad claims) and the new tokens were not saved, the next refresh
        would present the spent one and the user would be signed out.
        """
        if token_info is None:
            return state
        now = self.now()
        kept = {
            **state,
            "access_token": token_info["access_token"],
            "refresh_token": token_info.get("refresh_token") or state.get("refresh_token"),
            "id_token": token_info.get("id_token", state.get("id_token")),
            "expires_at": now + float(token_info.get("expires_in") or 24 * 3600),
            "refreshed_at": now,
        }
        await user.save_auth_state(kept)
        return kept

    async def forget_tokens(self, user: Any, *, reason: str) -> None:
        """Revoke the user's tokens at Synapse and clear them from ``auth_state``, under the
        user's refresh lock: a rotation in flight would otherwise write fresh tokens back."""
        lock = self._refresh_locks.setdefault(user.name, asyncio.Lock())
        async with lock:
            await self._forget_tokens_locked(user, reason=reason)

    async def _forget_tokens_locked(self, user: Any, *, reason: str) -> None:
        state = await user.get_auth_state()
        if state:
            await self.revoke_tokens(state, user.name)
        await user.save_auth_state(None)
        self.log.info("Synapse tokens of %s revoked and forgotten (%s)", user.name, reason)

    async def revoke_tokens(self, state: dict[str, Any], name: str) -> bool:
        """Synapse's revoke endpoint, once for the refresh token (which ends its access
        tokens too) or, without one, for the access token. Best effort: False if Synapse
        did not confirm (the token then ends on its own, 24 h for access tokens)."""
        token, hint = state.get("refresh_token"), "refresh_token"
        if not token:
            token, hint = state.get("access_token"), "access_token"
        if not token:
            return True
        # OAuthClientAuthFilter: the client authenticates with HTTP Basic, whatever the
        # token endpoint's setting (basic_auth) is.
        credentials = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode())
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Authorization": f"Basic {credentials.decode()}",
        }
        try:
            await self.httpfetch(
                self.revoke_url,
                label="token revocation",
                method="POST",
                headers=headers,
                body=json.dumps({"token": token, "token_type_hint": hint}),
                parse_json=False,
                validate_cert=self.validate_server_cert,
            )
        except (HTTPClientError, OSError, TimeoutError) as e:
            self.log.warning("Could not revoke the Synapse tokens of %s: %s", name, e)
            return False
        return True

    async def _end_access(self, user: Any, handler: Any, *, reason: str) -> None:
        """Everything the user could still use, gone at once (see `authenticator.access`):
        the hub's doors first (local and quick), then the tokens at Synapse."""
        done = await end_access(user, handler)
        await self._forget_tokens_locked(user, reason=reason)
        self.log.warning("Access of %s ended (%s): %s", user.name, reason, "; ".join(done))
        audit.record(
            "access_ended",
            audit.HUB,
            user=user.name,
            reason=f"{reason}: {'; '.join(done)}",
            outcome="ok",
        )

    async def _save_refreshed(
        self,
        user: Any,
        state: dict[str, Any],
        token_info: dict[str, Any] | None,
        userinfo: dict[str, Any],
        identity: SynapseIdentity,
    ) -> dict[str, Any]:
        if token_info is not None:
            # Synapse always returns a new refresh token; keep the old one only if it did not.
            token_info.setdefault("refresh_token", state.get("refresh_token"))
            new_state = self.build_auth_state_dict(token_info, userinfo)
            # a rotated token answers the team claim asked at sign-in, not today's
            new_state["requested_teams"] = state.get("requested_teams", sorted(self.all_team_ids))
        else:
            new_state = {
                **state,
                "user_name": identity.user_name,
                "email": identity.email,
                "teams": list(identity.teams),
                self.user_auth_state_key: userinfo,
            }
        # Saved before the lock is released, so a refresh waiting on it sees rotated tokens.
        await user.save_auth_state(new_state)
        model = {
            "name": user.name,
            "admin": self._is_admin(user.name, new_state["teams"]),
            "auth_state": new_state,
        }
        if self.manage_groups:
            model["groups"] = sorted(await self.get_user_groups(new_state))
        return model
