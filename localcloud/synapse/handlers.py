"""Tornado handlers for Synapse's OIDC endpoints (``/auth/v1``) and the REST calls (``/repo/v1``).

Each handler does what the Synapse controller method of the same path does
(OpenIDConnectController, UserProfileController, TeamController), after the servlet filters
that guard that path in Synapse's web.xml:

* ``/auth/v1/oauth2/token`` and ``/auth/v1/oauth2/revoke`` go through OAuthClientAuthFilter:
  client id and secret by HTTP Basic (``client_secret_basic``) or, when there is no
  Authorization header, as ``client_id``/``client_secret`` request parameters
  (``client_secret_post``; a secret in the query string is refused). Missing or wrong
  credentials: 401 with an ErrorResponse. On success it adds ``Cache-Control: no-store`` and
  ``Pragma: no-cache``.
* ``/auth/v1/oauth2/userinfo`` and ``/repo/v1/*`` go through AuthenticationFilter (a bearer
  token from ``Authorization: Bearer`` or the ``sessionToken`` header; no token means the
  anonymous user; a bad token is 401) and then OAuthScopeInterceptor (the token's scopes must
  include the method's @RequiredScope, else 403 ``insufficient_scope``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

import tornado.web

from .claims import CLAIM_NAMES, SCOPES
from .directory import ANONYMOUS_USER_ID, SynapseUser
from .errors import (
    ClientNotVerified,
    FilterRejection,
    Forbidden,
    IllegalArgument,
    NotFound,
    OAuthError,
    OAuthForbidden,
    OAuthUnauthenticated,
    ServerError,
    SynapseError,
    dumps,
)

if TYPE_CHECKING:
    from .app import SynapseStandIn

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
NOT_FOUND_REASON = (
    "{} was not found. Please reference API documentation at https://rest-docs.synapse.org/rest/"
)

INVALID_CLIENT_CREDENTIALS = (
    "OAuth Client ID and secret must be passed via Basic Authentication. "
    "Credentials are missing or invalid."
)
MISSING_CREDENTIALS = "Missing required credentials in the authorization header."
INVALID_BASIC_HEADER = "Invalid Authorization header for basic authentication ({})"


class StandInHandler(tornado.web.RequestHandler):
    """Base: fault injection before every request, and Synapse-shaped error bodies."""

    standin: SynapseStandIn

    def initialize(self, standin: SynapseStandIn) -> None:
        self.standin = standin
        self._client_verified = False

    async def prepare(self) -> None:
        """Apply an injected fault, if one matches this request."""
        fault = self.standin.faults.take(self.request.method or "GET", self.request.path)
        if fault is None:
            return
        if fault.delay > 0:
            await asyncio.sleep(fault.delay)
        if fault.status is not None:
            self.set_status(fault.status)
            self.set_header("Content-Type", fault.content_type)
            for name, value in fault.headers.items():
                self.set_header(name, value)
            self.finish(fault.payload())

    # -- helpers ---------------------------------------------------------------------------
    def issuer(self) -> str:
        """``<scheme>://<host>/auth/v1`` of this request (Synapse's EndpointHelper)."""
        return f"{self.request.protocol}://{self.request.host}/auth/v1"

    def write_json(self, obj: Any, status: int = 200) -> None:
        """Answer with a JSON body, as Synapse's message converter writes it."""
        self.set_status(status)
        self.set_header("Content-Type", JSON_CONTENT_TYPE)
        self.finish(dumps(obj))

    def param(self, name: str) -> str | None:
        """A request parameter (query or form body), unstripped; None when absent."""
        return self.get_argument(name, None, strip=False)

    # -- errors ----------------------------------------------------------------------------
    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if self._client_verified:
            self._no_store_headers()
        if isinstance(exc, FilterRejection):
            self.set_status(exc.status)
            for name, value in exc.headers().items():
                self.set_header(name, value)
            self.finish(exc.payload())
            return
        if isinstance(exc, SynapseError):
            error = exc
        elif isinstance(exc, tornado.web.MissingArgumentError):
            error = IllegalArgument(f"Required request parameter '{exc.arg_name}' is not present")
        elif isinstance(exc, tornado.web.HTTPError) and status_code == 405:
            error = SynapseError(f"Request method '{self.request.method}' not supported")
            error.status = 405
        elif isinstance(exc, tornado.web.HTTPError) and status_code == 404:
            error = NotFound(NOT_FOUND_REASON.format(self.request.method))
        elif isinstance(exc, tornado.web.HTTPError):
            error = SynapseError(exc.log_message or self._reason)
            error.status = status_code
        else:
            error = ServerError(f"{type(exc).__name__}: {exc}" if exc else "Internal error")
        self.set_status(error.status)
        self.set_header("Content-Type", JSON_CONTENT_TYPE)
        self.finish(dumps(error.body()))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, SynapseError | FilterRejection):
            return  # an answer, not a fault of the stand-in
        super().log_exception(typ, value, tb)

    def _no_store_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("Pragma", "no-cache")

    # -- OAuthClientAuthFilter --------------------------------------------------------------
    def verified_client_id(self) -> str:
        """The authenticated OAuth client's id, or a 401 rejection."""
        credentials: tuple[str, str] | None = None
        header = self.request.headers.get("Authorization")
        if header is not None and header.strip():
            if not header.startswith("Basic "):
                raise self._reject_client(INVALID_BASIC_HEADER.format('Missing "Basic " prefix'))
            try:
                decoded = base64.b64decode(header[len("Basic ") :].strip(), validate=True)
                text = decoded.decode("utf-8")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise self._reject_client(
                    INVALID_BASIC_HEADER.format(f"Malformed Base64 encoding: {exc}")
                ) from exc
            colon = text.find(":")
            if not 0 < colon < len(text) - 1:
                raise self._reject_client(
                    INVALID_BASIC_HEADER.format("Decoded credentials should be colon separated")
                )
            credentials = (text[:colon], text[colon + 1 :])
        else:
            client_id = self.param("client_id")
            client_secret = self.param("client_secret")
            if client_id and client_secret and client_secret.strip():
                if client_secret in (self.request.query or ""):
                    raise self._reject_client(
                        "Client credentials must not be passed as query parameters."
                    )
                credentials = (client_id, client_secret)
        if credentials is None:
            raise self._reject_client(MISSING_CREDENTIALS)
        if not self.standin.tokens.validate_client_credentials(*credentials):
            raise self._reject_client(INVALID_CLIENT_CREDENTIALS)
        self._client_verified = True
        self._no_store_headers()
        return credentials[0]

    @staticmethod
    def _reject_client(reason: str) -> FilterRejection:
        return FilterRejection(SynapseError(reason), 401)

    # -- AuthenticationFilter + OAuthScopeInterceptor ---------------------------------------
    def bearer_token(self) -> str | None:
        """The access token of this request, if any (sessionToken header first)."""
        token = self.request.headers.get("sessionToken")
        if token is None or not token.strip():
            header = self.request.headers.get("Authorization")
            if not header or not header.strip() or not header.startswith("Bearer "):
                return None
            token = header[len("Bearer ") :].strip()
        return token if token.strip() else None

    def authenticate(self, required_scopes: set[str]) -> tuple[str, dict[str, Any] | None]:
        """The caller's user id (anonymous without a token) and the token's claims."""
        token = self.bearer_token()
        if token is None:
            return ANONYMOUS_USER_ID, None
        try:
            user_id, claims = self.standin.tokens.validate_access_token(token)
        except OAuthError as exc:
            raise FilterRejection(OAuthUnauthenticated(exc.error, exc.description), 401) from exc
        except (IllegalArgument, Forbidden, ClientNotVerified, NotFound) as exc:
            raise FilterRejection(SynapseError("Invalid access token"), 401) from exc
        granted = set((claims.get("access") or {}).get("scope") or [])
        missing = sorted(required_scopes - granted)
        if missing:
            raise FilterRejection(
                OAuthForbidden(
                    "insufficient_scope",
                    "Request lacks scope(s) required by this service: " + ", ".join(missing),
                )
            )
        return user_id, claims


class NotFoundHandler(StandInHandler):
    """Any path Synapse has no handler for (NoHandlerFoundException): 404."""

    async def prepare(self) -> None:
        await super().prepare()
        if not self._finished:
            raise NotFound(NOT_FOUND_REASON.format(self.request.method))


# -- /auth/v1 ------------------------------------------------------------------------------
class DiscoveryHandler(StandInHandler):
    """GET /auth/v1/.well-known/openid-configuration (OpenIDConnectServiceImpl)."""

    def get(self) -> None:
        issuer = self.issuer()
        base = self.standin.base_url or f"{self.request.protocol}://{self.request.host}"
        self.write_json(
            {
                "issuer": issuer,
                "authorization_endpoint": base + "/signin",
                "token_endpoint": issuer + "/oauth2/token",
                "revocation_endpoint": issuer + "/oauth2/revoke",
                "userinfo_endpoint": issuer + "/oauth2/userinfo",
                "jwks_uri": issuer + "/oauth2/jwks",
                "registration_endpoint": issuer + "/oauth2/client",
                "scopes_supported": list(SCOPES),
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "userinfo_signing_alg_values_supported": ["RS256"],
                "request_object_signing_alg_values_supported": [],
                "claims_supported": list(CLAIM_NAMES),
                "service_documentation": "https://help.synapse.org/docs/",
                "claims_parameter_supported": True,
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                ],
            }
        )


class JwksHandler(StandInHandler):
    """GET /auth/v1/oauth2/jwks: the public half of the signing key."""

    def get(self) -> None:
        self.write_json(self.standin.signing_key.jwks())


class TokenHandler(StandInHandler):
    """POST /auth/v1/oauth2/token: authorization_code and refresh_token grants."""

    def post(self) -> None:
        client_id = self.verified_client_id()
        grant_type = self.param("grant_type")
        if grant_type is None:
            raise IllegalArgument(
                "Required request parameter 'grant_type' for method parameter type "
                "OAuthGrantType is not present"
            )
        tokens = self.standin.tokens
        if grant_type == "authorization_code":
            response = tokens.grant_authorization_code(
                client_id, self.param("code"), self.param("redirect_uri"), self.issuer()
            )
        elif grant_type == "refresh_token":
            response = tokens.grant_refresh_token(
                client_id, self.param("refresh_token"), self.param("scope"), self.issuer()
            )
        else:
            raise IllegalArgument(
                "Failed to convert value of type 'java.lang.String' to required type "
                "'org.sagebionetworks.repo.model.oauth.OAuthGrantType'; No enum constant "
                f"org.sagebionetworks.repo.model.oauth.OAuthGrantType.{grant_type}"
            )
        self.write_json(response)


class UserInfoHandler(StandInHandler):
    """GET and POST /auth/v1/oauth2/userinfo (@RequiredScope openid)."""

    def get(self) -> None:
        self.authenticate({"openid"})
        kind, body = self.standin.tokens.userinfo(self.bearer_token(), self.issuer())
        if kind == "jwt":
            self.set_header("Content-Type", "application/jwt")
            self.finish(body)
        else:
            self.write_json(body)

    def post(self) -> None:
        self.get()


class RevokeHandler(StandInHandler):
    """POST /auth/v1/oauth2/revoke with a JSON OAuthTokenRevocationRequest; 204 on success."""

    def post(self) -> None:
        client_id = self.verified_client_id()
        if not self.request.body:
            raise IllegalArgument("Required request body is missing")
        try:
            body = json.loads(self.request.body)
        except ValueError as exc:
            raise IllegalArgument(f"JSON parse error: {exc}") from exc
        if not isinstance(body, dict):
            raise IllegalArgument("The request body must be a JSON object")
        self.standin.tokens.revoke(client_id, body)
        self.set_status(204)
        self.finish()


# -- /repo/v1 ------------------------------------------------------------------------------
def user_profile_json(user: SynapseUser, *, private: bool) -> dict[str, Any]:
    """A UserProfile (UserProfile.json field order; private fields only for the owner)."""
    profile: dict[str, Any] = {"ownerId": user.user_id}
    if private:
        profile["etag"] = user.etag
    if user.first_name:
        profile["firstName"] = user.first_name
    if user.last_name:
        profile["lastName"] = user.last_name
    if private:
        profile["emails"] = [user.email] if user.email else []
        profile["openIds"] = []
    profile["userName"] = user.user_name
    if user.location:
        profile["location"] = user.location
    if user.company:
        profile["company"] = user.company
    profile["createdOn"] = user.created_on
    if private:
        profile["twoFactorAuthEnabled"] = False
    return profile


ANONYMOUS_PROFILE = SynapseUser(user_id=ANONYMOUS_USER_ID, user_name="anonymous")


class UserProfileHandler(StandInHandler):
    """GET /repo/v1/userProfile: the caller's own profile (@RequiredScope view)."""

    def get(self) -> None:
        user_id, _ = self.authenticate({"view"})
        if user_id == ANONYMOUS_USER_ID:
            self.write_json(user_profile_json(ANONYMOUS_PROFILE, private=True))
            return
        user = self.standin.directory.get_user(user_id)
        if user is None:
            raise NotFound(f"Principal '{user_id}' does not exist")
        self.write_json(user_profile_json(user, private=True))


class UserProfileByIdHandler(StandInHandler):
    """GET /repo/v1/userProfile/{id}: someone's profile, private fields cleared."""

    def get(self, profile_id: str) -> None:
        user_id, _ = self.authenticate({"view"})
        user = self.standin.directory.get_user(profile_id)
        if user is None:
            raise NotFound(f"UserProfile cannot be found for: {profile_id}")
        self.write_json(user_profile_json(user, private=user_id == profile_id))


class MembershipStatusHandler(StandInHandler):
    """GET /repo/v1/team/{id}/member/{principalId}/membershipStatus (@RequiredScope view).

    Invitations, join requests and access requirements do not exist in the stand-in, so
    ``hasOpenInvitation``, ``hasOpenRequest`` and ``hasUnmetAccessRequirement`` are false;
    ``canJoin`` is true for members (TeamManagerImpl.canAddTeamMember) and for a user asking
    about themselves and a team anyone can join; ``canSendEmail`` is membership (a team's
    default ACL gives members SEND_MESSAGE).
    """

    def get(self, team_id: str, principal_id: str) -> None:
        caller, _ = self.authenticate({"view"})
        directory = self.standin.directory
        if not principal_id.isdigit():
            raise IllegalArgument(f'For input string: "{principal_id}"')
        if directory.get_user(principal_id) is None:
            raise NotFound(f"Principal '{principal_id}' does not exist")
        if not team_id.isdigit():
            raise IllegalArgument(f'For input string: "{team_id}"')
        team = directory.get_team(team_id)
        if team is None:
            raise NotFound(f"Team id: '{team_id}' does not exist")
        is_member = directory.is_member(team_id, principal_id)
        can_join = is_member or (caller == principal_id and team.can_public_join)
        self.write_json(
            {
                "teamId": team_id,
                "userId": principal_id,
                "isMember": is_member,
                "hasOpenInvitation": False,
                "hasOpenRequest": False,
                "canJoin": can_join,
                "membershipApprovalRequired": not team.can_public_join,
                "hasUnmetAccessRequirement": False,
                "canSendEmail": is_member,
            }
        )
