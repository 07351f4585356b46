"""The OAuth 2.0 / OIDC rules: authorization codes, token grants, validation, userinfo, revoke.

This module is the stand-in's version of three Synapse classes, and follows them rule by rule
(Sage-Bionetworks/Synapse-Repository-Services, services/repository-managers/.../oauth/):

OpenIDConnectManagerImpl
    * authorization request: unknown client ``invalid_client``; unverified client 403; the
      ``redirect_uri`` must be a valid URL and exactly one of the client's registered URIs
      (``invalid_redirect_uri``); ``response_type`` must be ``code``;
    * codes are random UUIDs, valid 60 s (AUTHORIZATION_CODE_TIME_LIMIT_MILLIS), single use:
      redeeming deletes the code before any other check (OAuthDaoImpl.redeemAuthorizationCode),
      so a replayed code is ``invalid_grant "Invalid authorization code."``. Synapse does not
      revoke tokens issued from a replayed code, and neither does the stand-in;
    * the token request's ``redirect_uri`` must equal the authorization request's
      (``invalid_grant "URI mismatch: A vs. B"``) and the authenticated client must be the one
      the code was issued to (``invalid_grant``);
    * an id token only with ``openid``; a refresh token only with ``offline_access``;
      ``token_type: Bearer``; ``expires_in`` 86400 (AuthorizationConstants.
      ACCESS_TOKEN_EXPIRATION_TIME_SECONDS);
    * ``sub`` is a pairwise pseudonymous id (PPID): the user id AES-encrypted with a per-client
      secret, base64url (AESEncryptionUtils.encryptDeterministic). Use the ``userid`` claim for
      the Synapse user id;
    * refresh grant: optional ``scope`` must be a subset of the granted scopes
      (``invalid_scope``), omitted means all; the id token has no nonce; without ``openid`` no
      claims at all; access tokens carry ``refresh_token_id``;
    * access-token validation: the token must parse (see keys.py), be an OIDC_ACCESS_TOKEN,
      still have its server-side record, and its refresh token (if any) must be active, else
      ``invalid_token "The access token has been revoked."``;
    * userinfo: the claims recorded in the access token (``access.oidc_claims``), with values
      computed now, plus ``sub``; a signed JWT instead when the client registered
      ``userinfo_signed_response_alg``;
    * revoke: ``token_type_hint`` access_token revokes the token's refresh token (and so every
      access token issued from it), or the access token alone when it has none;
      ``refresh_token`` revokes that refresh token.

OIDCTokenManagerImpl
    * access token claims, in this order: ``access`` {``scope``: [...], ``oidc_claims``: {name:
      null or {essential, value, values}}}, ``auth_time``, ``iss``, ``aud`` (client id), ``exp``
      (now + 24 h), ``nbf``, ``iat``, ``jti``, ``sub``, ``token_type: OIDC_ACCESS_TOKEN``,
      ``refresh_token_id`` (ClaimsJsonUtil.addAccessClaims);
    * id token: the user-info claims, then ``auth_time``, ``iss``, ``aud``, ``exp`` (now +
      60 s, ID_TOKEN_EXPIRATION_TIME_SECONDS), ``nbf``, ``iat``, ``jti``, ``sub``,
      ``token_type: OIDC_ID_TOKEN``, ``nonce`` (when given).

OAuthRefreshTokenManagerImpl
    * a refresh token is 32 random bytes in base64url; only its SHA-256 is stored;
    * single use: every refresh grant rotates it (same token id, new value; the old value is
      ``IllegalArgumentException "The token does not match an existing token."``, a plain 400);
    * it expires when unused for 180 days (REFRESH_TOKEN_LEASE_DURATION_DAYS):
      ``invalid_grant "The refresh token has expired."``;
    * at most 100 per user and client; the least recently used ones go first;
    * rotation happens in a transaction: a refresh grant that fails (wrong client, scope not
      granted) leaves the token as it was.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import itertools
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .claims import ClaimRequest, parse_claims_parameter, parse_scope_string, user_info
from .clock import Clock
from .directory import Directory, OAuthClient
from .errors import (
    ClientNotVerified,
    Forbidden,
    IllegalArgument,
    NotFound,
    OAuthBadRequest,
    OAuthUnauthenticated,
    ServerError,
)
from .keys import SigningKey

ACCESS_TOKEN_LIFETIME_SECONDS = 24 * 3600
ID_TOKEN_LIFETIME_SECONDS = 60
AUTHORIZATION_CODE_LIFETIME_MS = 60_000
REFRESH_TOKEN_LEASE_SECONDS = 180 * 24 * 3600
MAX_REFRESH_TOKENS_PER_CLIENT_PER_USER = 100

OIDC_ACCESS_TOKEN = "OIDC_ACCESS_TOKEN"
OIDC_ID_TOKEN = "OIDC_ID_TOKEN"


def _npe(where: str) -> ServerError:
    """What Synapse answers when a required field is missing and Java dereferences null."""
    return ServerError(
        "Send a Jira bug report to the platform team with this message: "
        f"java.lang.NullPointerException (at {where})"
    )


def is_valid_url(url: str) -> bool:
    """Roughly Apache UrlValidator(ALLOW_2_SLASHES + ALLOW_ALL_SCHEMES), as Synapse uses it.

    A scheme and a host are required; the host is an IP literal or a dotted name with an
    alphabetic top-level label. Local names such as ``localhost`` are refused, as they are by
    Synapse (its validator is built without ALLOW_LOCAL_URLS).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        return False
    if not parts.scheme or not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    return len(labels) >= 2 and all(labels) and labels[-1].isalpha() and len(labels[-1]) >= 2


@dataclass
class AuthorizationRequest:
    """What a code stands for (OIDCAuthorizationRequest, stored with the code)."""

    client_id: str
    redirect_uri: str
    response_type: str
    scope: str
    claims: dict[str, ClaimRequest]
    nonce: str | None = None
    user_id: str | None = None
    authorized_at_ms: int | None = None
    authenticated_at_ms: int | None = None


@dataclass
class RefreshTokenRecord:
    """Server-side state of one refresh token (OAuthRefreshTokenInformation + its hash)."""

    token_id: str
    token_hash: str
    principal_id: str
    client_id: str
    scopes: list[str]
    claims: dict[str, ClaimRequest]
    name: str
    authorized_on: float
    last_used: float
    etag: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class AccessTokenRecord:
    """Server-side record of an issued access token (OIDCAccessTokenData)."""

    token_id: str
    principal_id: str
    client_id: str
    created_on: float
    expires_on: float
    refresh_token_id: str | None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenService:
    """Issues and checks codes and tokens; all state lives in memory."""

    def __init__(
        self,
        directory: Directory,
        clients: dict[str, OAuthClient],
        key: SigningKey,
        clock: Clock,
    ) -> None:
        self.directory = directory
        self.clients = clients
        self.key = key
        self.clock = clock
        self.codes: dict[str, AuthorizationRequest] = {}
        self.refresh_tokens: dict[str, RefreshTokenRecord] = {}
        self.access_tokens: dict[str, AccessTokenRecord] = {}
        # user id -> ms of the user's last sign-in (AuthenticationDAO.getAuthenticatedOn)
        self.authenticated_on: dict[str, int] = {}
        self._sector_keys: dict[str, bytes] = {}
        self._refresh_ids = itertools.count(1001)

    # -- clients ----------------------------------------------------------------------------
    def client(self, client_id: str) -> OAuthClient:
        """The registered client, or NotFound (as OAuthClientDao.getOAuthClient)."""
        client = self.clients.get(client_id)
        if client is None:
            raise NotFound(f"The requested OAuth 2.0 client does not exist: {client_id}")
        return client

    def check_client_verified(self, client_id: str) -> None:
        """OpenIDConnectManagerImpl.validateClientVerificationStatus."""
        if not self.client(client_id).verified:
            raise ClientNotVerified(client_id)

    def validate_client_credentials(self, client_id: str, client_secret: str) -> bool:
        """OAuthClientManagerImpl.validateClientCredentials: unknown client is just False."""
        client = self.clients.get(client_id)
        if client is None or not client_id or not client_secret:
            return False
        return secrets.compare_digest(client.client_secret, client_secret)

    # -- pairwise subject ids ---------------------------------------------------------------
    def _sector_key(self, client_id: str) -> bytes:
        """The client's AES-128 sector secret.

        Synapse keeps one secret per sector identifier forever, so a user's ``sub`` for a client
        never changes. The stand-in derives it from the client id for the same stability across
        restarts (it protects nothing here).
        """
        key = self._sector_keys.get(client_id)
        if key is None:
            seed = f"localcloud-synapse-sector:{client_id}".encode()
            key = self._sector_keys[client_id] = hashlib.sha256(seed).digest()[:16]
        return key

    def ppid(self, user_id: str, client_id: str) -> str:
        """The pairwise subject id of a user for a client (AES/ECB/PKCS5, base64url)."""
        padder = padding.PKCS7(128).padder()
        data = padder.update(user_id.encode("utf-8")) + padder.finalize()
        encryptor = Cipher(algorithms.AES(self._sector_key(client_id)), modes.ECB()).encryptor()
        raw = encryptor.update(data) + encryptor.finalize()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def user_id_from_ppid(self, ppid: str, client_id: str) -> str:
        """Reverse of :meth:`ppid` (OpenIDConnectManagerImpl.getUserIdFromPPID)."""
        self.check_client_verified(client_id)
        try:
            raw = base64.urlsafe_b64decode(ppid + "=" * (-len(ppid) % 4))
            decryptor = Cipher(algorithms.AES(self._sector_key(client_id)), modes.ECB()).decryptor()
            data = decryptor.update(raw) + decryptor.finalize()
            unpadder = padding.PKCS7(128).unpadder()
            return (unpadder.update(data) + unpadder.finalize()).decode("utf-8")
        except ValueError as exc:
            raise IllegalArgument(f"Invalid subject {ppid!r}") from exc

    # -- authorization ----------------------------------------------------------------------
    def client_for_request(self, client_id: str | None, redirect_uri: str | None) -> OAuthClient:
        """The checks after which an error may be sent to ``redirect_uri`` (RFC 6749 4.1.2.1).

        Until these pass, errors are shown to the user, never redirected.
        """
        if not client_id:
            raise IllegalArgument("Client ID is required and must not be the empty string.")
        client = self.clients.get(client_id)
        if client is None:
            raise OAuthBadRequest("invalid_client", f"Invalid OAuth Client ID: {client_id}")
        self.check_client_verified(client_id)
        if redirect_uri is None or not is_valid_url(redirect_uri):
            raise OAuthBadRequest(
                "invalid_redirect_uri", f"Redirect URI is not a valid url: {redirect_uri}"
            )
        if redirect_uri not in client.redirect_uris:
            raise OAuthBadRequest(
                "invalid_redirect_uri",
                f"Redirect URI {redirect_uri} is not registered for {client.name}",
            )
        return client

    def authorization_request(self, params: dict[str, str | None]) -> AuthorizationRequest:
        """Validate an authorization request's parameters (getAuthenticationRequestDescription)."""
        client_id = params.get("client_id")
        redirect_uri = params.get("redirect_uri")
        self.client_for_request(client_id, redirect_uri)
        assert client_id is not None and redirect_uri is not None
        response_type = params.get("response_type")
        if not response_type:
            raise OAuthBadRequest("invalid_request", "Missing response_type.")
        if response_type != "code":
            raise OAuthBadRequest(
                "unsupported_response_type", f"Unsupported response type {response_type}"
            )
        scope = params.get("scope") or ""
        parse_scope_string(scope)
        try:
            claims = parse_claims_parameter(params.get("claims"))
        except IllegalArgument as exc:
            raise OAuthBadRequest("invalid_request", exc.reason) from exc
        return AuthorizationRequest(
            client_id=client_id,
            redirect_uri=redirect_uri,
            response_type=response_type,
            scope=scope,
            claims=claims,
            nonce=params.get("nonce") or None,
        )

    def record_login(self, user_id: str) -> None:
        """Remember when the user signed in; it becomes ``auth_time`` in tokens."""
        self.authenticated_on[user_id] = self.clock.now_ms()

    def authorize(self, user_id: str, request: AuthorizationRequest) -> str:
        """Issue a code for a consented request (OpenIDConnectManagerImpl.authorizeClient)."""
        self.client_for_request(request.client_id, request.redirect_uri)
        request.user_id = user_id
        request.authorized_at_ms = self.clock.now_ms()
        request.authenticated_at_ms = self.authenticated_on.get(user_id)
        code = str(uuid.uuid4())
        self.codes[code] = request
        return code

    # -- token endpoint ---------------------------------------------------------------------
    def grant_authorization_code(
        self, verified_client_id: str, code: str | None, redirect_uri: str | None, issuer: str
    ) -> dict[str, Any]:
        """``grant_type=authorization_code`` (generateTokenResponseWithAuthorizationCode)."""
        if code is None:
            raise IllegalArgument("Authorization Code is required.")
        if redirect_uri is None:
            raise IllegalArgument("Redirect URI is required.")
        self.check_client_verified(verified_client_id)
        request = self.codes.pop(code, None)  # redeemed (deleted) whatever happens next
        if request is None:
            raise OAuthBadRequest("invalid_grant", "Invalid authorization code.")
        assert request.user_id is not None and request.authorized_at_ms is not None
        now = self.clock.now_ms()
        if now > request.authorized_at_ms + AUTHORIZATION_CODE_LIFETIME_MS:
            raise OAuthBadRequest("invalid_grant", "Authorization code has expired.")
        if request.redirect_uri != redirect_uri:
            raise OAuthBadRequest(
                "invalid_grant", f"URI mismatch: {request.redirect_uri} vs. {redirect_uri}"
            )
        scopes = parse_scope_string(request.scope)
        ppid = self.ppid(request.user_id, verified_client_id)
        if request.client_id != verified_client_id:
            raise OAuthBadRequest("invalid_grant")

        id_token = None
        if "openid" in scopes:
            id_token = self.create_id_token(
                issuer=issuer,
                subject=ppid,
                client_id=request.client_id,
                now_ms=now,
                nonce=request.nonce,
                auth_time_ms=request.authenticated_at_ms,
                claims=user_info(
                    self.directory, request.user_id, scopes, request.claims["id_token"]
                ),
            )
        refresh_token = refresh_token_id = None
        if "offline_access" in scopes:
            refresh_token, record = self._create_refresh_token(
                request.user_id, request.client_id, scopes, request.claims
            )
            refresh_token_id = record.token_id
        access_token = self.create_access_token(
            user_id=request.user_id,
            issuer=issuer,
            subject=ppid,
            client_id=request.client_id,
            now_ms=now,
            auth_time_ms=request.authenticated_at_ms,
            refresh_token_id=refresh_token_id,
            scopes=scopes,
            userinfo_claims=request.claims["userinfo"],
        )
        return self._token_response(access_token, refresh_token, id_token)

    def grant_refresh_token(
        self, verified_client_id: str, refresh_token: str | None, scope: str | None, issuer: str
    ) -> dict[str, Any]:
        """``grant_type=refresh_token`` (generateTokenResponseWithRefreshToken + rotation)."""
        if refresh_token is None:
            raise IllegalArgument("Refresh Token is required.")
        self.check_client_verified(verified_client_id)
        scopes = parse_scope_string(scope)
        record = self._refresh_record_by_token(refresh_token)
        if record is None:
            raise IllegalArgument("The token does not match an existing token.")
        if not self.is_refresh_token_active(record.token_id):
            raise OAuthBadRequest("invalid_grant", "The refresh token has expired.")
        if record.client_id != verified_client_id:
            raise OAuthBadRequest("invalid_grant")
        if not scopes:
            scopes = list(record.scopes)
        elif not set(scopes) <= set(record.scopes):
            raise OAuthBadRequest("invalid_scope")

        # All checks passed: rotate (the transaction commits).
        new_token = self._new_refresh_token_value()
        record.token_hash = _hash(new_token)
        record.last_used = self.clock.now()
        record.etag = str(uuid.uuid4())

        now = self.clock.now_ms()
        auth_time = self.authenticated_on.get(record.principal_id)
        ppid = self.ppid(record.principal_id, verified_client_id)
        id_claims = record.claims.get("id_token", {})
        userinfo_claims = record.claims.get("userinfo", {})
        id_token = None
        if "openid" in scopes:
            id_token = self.create_id_token(
                issuer=issuer,
                subject=ppid,
                client_id=record.client_id,
                now_ms=now,
                nonce=None,
                auth_time_ms=auth_time,
                claims=user_info(self.directory, record.principal_id, scopes, id_claims),
            )
        else:
            userinfo_claims = {}
        access_token = self.create_access_token(
            user_id=record.principal_id,
            issuer=issuer,
            subject=ppid,
            client_id=record.client_id,
            now_ms=now,
            auth_time_ms=auth_time,
            refresh_token_id=record.token_id,
            scopes=scopes,
            userinfo_claims=userinfo_claims,
        )
        return self._token_response(access_token, new_token, id_token)

    @staticmethod
    def _token_response(
        access_token: str, refresh_token: str | None, id_token: str | None
    ) -> dict[str, Any]:
        """OIDCTokenResponse in its schema's field order; null fields left out."""
        response: dict[str, Any] = {"access_token": access_token}
        if refresh_token is not None:
            response["refresh_token"] = refresh_token
        if id_token is not None:
            response["id_token"] = id_token
        response["token_type"] = "Bearer"
        response["expires_in"] = ACCESS_TOKEN_LIFETIME_SECONDS
        return response

    # -- JWTs --------------------------------------------------------------------------------
    def create_id_token(
        self,
        *,
        issuer: str,
        subject: str,
        client_id: str,
        now_ms: int,
        nonce: str | None,
        auth_time_ms: int | None,
        claims: dict[str, Any],
    ) -> str:
        """An OIDC id token, valid 60 s (OIDCTokenManagerImpl.createOIDCIdToken)."""
        payload: dict[str, Any] = dict(claims)
        if auth_time_ms is not None:
            payload["auth_time"] = auth_time_ms // 1000
        payload.update(
            iss=issuer,
            aud=client_id,
            exp=(now_ms + ID_TOKEN_LIFETIME_SECONDS * 1000) // 1000,
            nbf=now_ms // 1000,
            iat=now_ms // 1000,
            jti=str(uuid.uuid4()),
            sub=subject,
            token_type=OIDC_ID_TOKEN,
        )
        if nonce is not None:
            payload["nonce"] = nonce
        return self.key.sign(payload)

    def create_access_token(
        self,
        *,
        user_id: str,
        issuer: str,
        subject: str,
        client_id: str,
        now_ms: int,
        auth_time_ms: int | None,
        refresh_token_id: str | None,
        scopes: list[str],
        userinfo_claims: ClaimRequest,
    ) -> str:
        """A 24 h access token, recorded server-side (OIDCTokenManagerImpl)."""
        token_id = str(uuid.uuid4())
        payload: dict[str, Any] = {
            "access": {"scope": list(scopes), "oidc_claims": dict(userinfo_claims)},
        }
        if auth_time_ms is not None:
            payload["auth_time"] = auth_time_ms // 1000
        exp = (now_ms + ACCESS_TOKEN_LIFETIME_SECONDS * 1000) // 1000
        payload.update(
            iss=issuer,
            aud=client_id,
            exp=exp,
            nbf=now_ms // 1000,
            iat=now_ms // 1000,
            jti=token_id,
            sub=subject,
            token_type=OIDC_ACCESS_TOKEN,
        )
        if refresh_token_id is not None:
            payload["refresh_token_id"] = refresh_token_id
        self.access_tokens[token_id] = AccessTokenRecord(
            token_id=token_id,
            principal_id=user_id,
            client_id=client_id,
            created_on=now_ms / 1000,
            expires_on=exp,
            refresh_token_id=refresh_token_id,
        )
        return self.key.sign(payload)

    def parse(self, token: str | None) -> dict[str, Any]:
        """Verify a JWT with the stand-in's key and clock."""
        if token is None:
            raise IllegalArgument("JSON Web Token is required.")
        return self.key.parse(token, self.clock.now())

    # -- refresh tokens ---------------------------------------------------------------------
    @staticmethod
    def _new_refresh_token_value() -> str:
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")

    def _create_refresh_token(
        self, user_id: str, client_id: str, scopes: list[str], claims: dict[str, ClaimRequest]
    ) -> tuple[str, RefreshTokenRecord]:
        """OAuthRefreshTokenManagerImpl.createRefreshToken."""
        mine = sorted(
            (
                r
                for r in self.refresh_tokens.values()
                if r.principal_id == user_id and r.client_id == client_id
            ),
            key=lambda r: r.last_used,
        )
        excess = len(mine) - (MAX_REFRESH_TOKENS_PER_CLIENT_PER_USER - 1)
        for old in mine[: max(excess, 0)]:
            del self.refresh_tokens[old.token_id]
        token = self._new_refresh_token_value()
        now = self.clock.now()
        record = RefreshTokenRecord(
            token_id=str(next(self._refresh_ids)),
            token_hash=_hash(token),
            principal_id=user_id,
            client_id=client_id,
            scopes=list(scopes),
            claims=claims,
            name=str(uuid.uuid4()),
            authorized_on=now,
            last_used=now,
        )
        self.refresh_tokens[record.token_id] = record
        return token, record

    def _refresh_record_by_token(self, token: str) -> RefreshTokenRecord | None:
        token_hash = _hash(token)
        for record in self.refresh_tokens.values():
            if record.token_hash == token_hash:
                return record
        return None

    def is_refresh_token_active(self, token_id: str) -> bool:
        """Exists and was used within the last 180 days."""
        record = self.refresh_tokens.get(token_id)
        return (
            record is not None and record.last_used > self.clock.now() - REFRESH_TOKEN_LEASE_SECONDS
        )

    def revoke_refresh_token(self, client_id: str, token_id: str) -> None:
        """OAuthRefreshTokenManagerImpl.revokeRefreshToken(clientId, tokenId)."""
        record = self.refresh_tokens.get(token_id)
        if record is None:
            raise NotFound(f"Refresh token with ID:{token_id} does not exist")
        if record.client_id != client_id:
            raise Forbidden(
                "The specified token could not be revoked. It is owned by a different client."
            )
        del self.refresh_tokens[token_id]

    # -- using access tokens ----------------------------------------------------------------
    def validate_access_token(self, token: str) -> tuple[str, dict[str, Any]]:
        """OpenIDConnectManagerImpl.validateAccessToken: the user id and the token's claims."""
        claims = self.parse(token)
        user_id = self.user_id_from_ppid(str(claims.get("sub")), str(claims.get("aud")))
        token_type = claims.get("token_type")
        if token_type == OIDC_ACCESS_TOKEN:
            refresh_token_id = claims.get("refresh_token_id")
            if (
                refresh_token_id is not None and not self.is_refresh_token_active(refresh_token_id)
            ) or claims.get("jti") not in self.access_tokens:
                raise OAuthUnauthenticated("invalid_token", "The access token has been revoked.")
        else:
            raise OAuthUnauthenticated(
                "invalid_token",
                f"The provided token is a {token_type} token and cannot be used to "
                "authenticate requests.",
            )
        return user_id, claims

    def userinfo(self, token: str | None, issuer: str) -> tuple[str, Any]:
        """The userinfo response: ``("json", dict)`` or ``("jwt", str)``."""
        if token is None:
            raise IllegalArgument("Access token is required.")
        claims = self.parse(token)
        client_id = str(claims.get("aud"))
        access = claims.get("access") or {}
        scopes = list(access.get("scope") or [])
        requested: ClaimRequest = dict(access.get("oidc_claims") or {})
        ppid = str(claims.get("sub"))
        user_id = self.user_id_from_ppid(ppid, client_id)
        info = user_info(self.directory, user_id, scopes, requested)
        if self.client(client_id).userinfo_signed_response_alg is None:
            info["sub"] = ppid
            return "json", info
        signed = self.create_id_token(
            issuer=issuer,
            subject=ppid,
            client_id=client_id,
            now_ms=self.clock.now_ms(),
            nonce=None,
            auth_time_ms=self.authenticated_on.get(user_id),
            claims=info,
        )
        return "jwt", signed

    def revoke(self, verified_client_id: str, request: dict[str, Any]) -> None:
        """POST /oauth2/revoke with an OAuthTokenRevocationRequest body."""
        hint = request.get("token_type_hint")
        token = request.get("token")
        if hint is None:
            raise _npe("OpenIDConnectManagerImpl.revokeToken")
        if hint == "access_token":
            claims = self.parse(token)
            refresh_token_id = claims.get("refresh_token_id")
            if refresh_token_id is not None:
                self.revoke_refresh_token(verified_client_id, str(refresh_token_id))
            else:
                self.access_tokens.pop(str(claims.get("jti")), None)
            return
        if hint == "refresh_token":
            if token is None:
                raise _npe("OAuthRefreshTokenManagerImpl.hashToken")
            record = self._refresh_record_by_token(str(token))
            if record is None:
                raise NotFound("The refresh token does not exist.")
            if record.client_id != verified_client_id:
                raise Forbidden("You do not have permission to view this token metadata")
            self.revoke_refresh_token(verified_client_id, record.token_id)
            return
        raise IllegalArgument(
            f"No enum constant org.sagebionetworks.repo.model.oauth.TokenTypeHint.{hint}"
        )

    # -- for assertions ---------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Outstanding codes and issued tokens, JSON-ready (the control API lists these)."""
        now = self.clock.now()
        return {
            "now": now,
            "codes": [
                {
                    "code": code,
                    "client_id": req.client_id,
                    "user_id": req.user_id,
                    "redirect_uri": req.redirect_uri,
                    "scope": req.scope,
                    "authorized_at": (req.authorized_at_ms or 0) / 1000,
                }
                for code, req in self.codes.items()
            ],
            "refresh_tokens": [
                {
                    **{k: v for k, v in asdict(r).items() if k not in ("token_hash", "claims")},
                    "active": self.is_refresh_token_active(r.token_id),
                }
                for r in self.refresh_tokens.values()
            ],
            "access_tokens": [
                {**asdict(a), "expired": now > a.expires_on} for a in self.access_tokens.values()
            ],
        }
