"""The Synapse stand-in (localcloud.synapse) against Synapse's documented behaviour.

Every test drives the stand-in over real loopback HTTP and names, in its docstring, the rule of
Synapse it checks and the file of Sage-Bionetworks/Synapse-Repository-Services the rule comes
from. Expiry is tested by advancing the stand-in's clock, not by waiting.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from localcloud.synapse import SigningKey, SynapseStandIn, serve
from localcloud.synapse.directory import (
    DEMO_AD_TEAM_ID,
    DEMO_ADMIN_TEAM_ID,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_NF_TEAM_ID,
    DEMO_REDIRECT_URI,
    DEMO_UNRELATED_TEAM_ID,
    OAuthClient,
    demo_client,
)

ERROR_RESPONSE = "org.sagebionetworks.repo.model.ErrorResponse"
ALL_DEMO_TEAMS = [DEMO_ADMIN_TEAM_ID, DEMO_AD_TEAM_ID, DEMO_NF_TEAM_ID]
OTHER_CLIENT = OAuthClient(
    client_id="other-client",
    client_secret="other-secret",
    name="Another app",
    redirect_uris=["http://127.0.0.1:9999/callback"],
)


def hub_claims(teams: list[str] = ALL_DEMO_TEAMS) -> dict[str, Any]:
    """The claims request the hub sends: identity claims and the team claim with values."""
    wanted = {"userid": None, "user_name": None, "email": None, "team": {"values": teams}}
    return {"id_token": dict(wanted), "userinfo": dict(wanted)}


def unverified(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


@dataclass
class Stand:
    """A running stand-in and an HTTP client for it."""

    standin: SynapseStandIn
    base: str
    http: AsyncHTTPClient

    async def fetch(
        self,
        path: str,
        method: str = "GET",
        *,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        json_body: Any = None,
        bearer: str | None = None,
    ) -> HTTPResponse:
        headers = dict(headers or {})
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if json_body is not None:
            body = json.dumps(json_body)
            headers["Content-Type"] = "application/json"
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        if method in ("POST", "PUT") and body is None:
            body = b""
        return await self.http.fetch(
            self.base + path,
            method=method,
            body=body,
            headers=headers,
            follow_redirects=False,
            raise_error=False,
        )

    async def sign_in(
        self,
        user: str = "alice",
        *,
        scope: str = "openid view",
        claims: dict[str, Any] | None = None,
        nonce: str | None = None,
        state: str = "state-123",
        client_id: str = DEMO_CLIENT_ID,
        redirect_uri: str = DEMO_REDIRECT_URI,
        consent: str = "allow",
    ) -> HTTPResponse:
        """Submit the sign-in form as a browser would (the hidden fields plus the answer)."""
        form = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "username": user,
            "consent": consent,
        }
        if claims is not None:
            form["claims"] = json.dumps(claims)
        if nonce is not None:
            form["nonce"] = nonce
        return await self.fetch("/signin", "POST", form=form)

    async def code(self, user: str = "alice", **kwargs: Any) -> str:
        response = await self.sign_in(user, **kwargs)
        assert response.code == 302, response.body
        return parse_qs(urlsplit(response.headers["Location"]).query)["code"][0]

    async def token(
        self,
        auth: str = "basic",
        client: tuple[str, str] = (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET),
        **params: str,
    ) -> HTTPResponse:
        headers = {}
        if auth == "basic":
            pair = f"{client[0]}:{client[1]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        elif auth == "post":
            params = {**params, "client_id": client[0], "client_secret": client[1]}
        return await self.fetch("/auth/v1/oauth2/token", "POST", form=params, headers=headers)

    async def tokens(self, user: str = "alice", **kwargs: Any) -> dict[str, Any]:
        code = await self.code(user, **kwargs)
        response = await self.token(
            grant_type="authorization_code", code=code, redirect_uri=DEMO_REDIRECT_URI
        )
        assert response.code == 200, response.body
        return json.loads(response.body)

    async def refresh(self, refresh_token: str, **params: str) -> HTTPResponse:
        return await self.token(grant_type="refresh_token", refresh_token=refresh_token, **params)

    async def revoke(self, token: str, hint: str) -> HTTPResponse:
        pair = f"{DEMO_CLIENT_ID}:{DEMO_CLIENT_SECRET}".encode()
        return await self.fetch(
            "/auth/v1/oauth2/revoke",
            "POST",
            json_body={"token": token, "token_type_hint": hint},
            headers={"Authorization": "Basic " + base64.b64encode(pair).decode()},
        )

    async def control(self, path: str, method: str = "GET", body: Any = None) -> HTTPResponse:
        return await self.fetch("/_control" + path, method, json_body=body)


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    """One RSA key for the whole run: generating one per test would cost time, not coverage."""
    return SigningKey()


@pytest.fixture
async def stand(signing_key: SigningKey) -> AsyncIterator[Stand]:
    standin, server, base = await serve(
        clients=[demo_client(), OTHER_CLIENT], signing_key=signing_key
    )
    http = AsyncHTTPClient(force_instance=True)
    try:
        yield Stand(standin, base, http)
    finally:
        http.close()
        server.stop()
        await server.close_all_connections()


def body(response: HTTPResponse) -> Any:
    return json.loads(response.body)


# -- discovery and keys -------------------------------------------------------------------------
async def test_discovery_document(stand: Stand) -> None:
    """Discovery lists Synapse's endpoints, scopes, claims and methods.

    Source: OpenIDConnectServiceImpl.getOIDCConfiguration, OAuthScope.json, OIDCClaimName.json.
    """
    response = await stand.fetch("/auth/v1/.well-known/openid-configuration")
    assert response.code == 200
    doc = body(response)
    issuer = stand.base + "/auth/v1"
    assert doc["issuer"] == issuer
    assert doc["authorization_endpoint"] == stand.base + "/signin"
    assert doc["token_endpoint"] == issuer + "/oauth2/token"
    assert doc["userinfo_endpoint"] == issuer + "/oauth2/userinfo"
    assert doc["revocation_endpoint"] == issuer + "/oauth2/revoke"
    assert doc["jwks_uri"] == issuer + "/oauth2/jwks"
    assert doc["scopes_supported"] == [
        "openid",
        "email",
        "profile",
        "view",
        "download",
        "modify",
        "authorize",
        "offline_access",
    ]
    assert doc["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert doc["response_types_supported"] == ["code"]
    assert doc["subject_types_supported"] == ["pairwise"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
    ]
    assert doc["claims_parameter_supported"] is True
    for claim in ("userid", "user_name", "team", "is_certified", "validated_at", "orcid"):
        assert claim in doc["claims_supported"]


async def test_jwks_verifies_issued_tokens(stand: Stand) -> None:
    """The JWKS holds the RSA key whose kid signs the tokens (RS256, typ JWT).

    Source: KeyPairUtil.computeKeyId / getJSONWebKeySetForPEMEncodedRsaKeys,
    OIDCTokenManagerImpl.createSignedJWT.
    """
    keys = body(await stand.fetch("/auth/v1/oauth2/jwks"))["keys"]
    assert len(keys) == 1
    jwk = keys[0]
    assert jwk["kty"] == "RSA" and jwk["use"] == "sig" and jwk["e"] == "AQAB"
    assert jwk["concreteType"] == "org.sagebionetworks.repo.model.oauth.JsonWebKeyRSA"
    assert len(jwk["kid"].split(":")) == 12
    tokens = await stand.tokens()
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header == {"alg": "RS256", "typ": "JWT", "kid": jwk["kid"]}
    public_key = jwt.PyJWK(jwk, algorithm="RS256").key
    claims = jwt.decode(
        tokens["id_token"],
        public_key,
        algorithms=["RS256"],
        audience="x",
        options={"verify_aud": False},
    )
    assert claims["iss"] == stand.base + "/auth/v1"


# -- authorization code flow -------------------------------------------------------------------
@pytest.mark.parametrize("auth", ["basic", "post"])
async def test_code_flow_with_basic_and_post_client_auth(stand: Stand, auth: str) -> None:
    """Code flow: the sign-in redirects with code and state; the token endpoint accepts the
    client by HTTP Basic (client_secret_basic) or by form parameters (client_secret_post) and
    answers with Bearer tokens and no-store headers.

    Source: OAuthClientAuthFilter.getCredentialsFromRequest, OpenIDConnectController
    .getTokenResponse, OIDCTokenResponse.json.
    """
    response = await stand.sign_in("alice", state="s t&ate")
    assert response.code == 302
    location = urlsplit(response.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == DEMO_REDIRECT_URI
    query = parse_qs(location.query)
    assert query["state"] == ["s t&ate"]
    token = await stand.token(
        auth, grant_type="authorization_code", code=query["code"][0], redirect_uri=DEMO_REDIRECT_URI
    )
    assert token.code == 200, token.body
    assert token.headers["Cache-Control"] == "no-store"
    assert token.headers["Pragma"] == "no-cache"
    answer = body(token)
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 86400
    assert set(answer) == {"access_token", "id_token", "token_type", "expires_in"}


async def test_token_endpoint_rejects_bad_client_credentials(stand: Stand) -> None:
    """Missing or wrong client credentials are a 401 ErrorResponse from the client filter,
    with WWW-Authenticate; a secret in the query string is refused.

    Source: BasicAuthenticationFilter, OAuthClientAuthFilter, HttpAuthUtil.reject.
    """
    code = await stand.code()
    wrong = await stand.token(
        client=(DEMO_CLIENT_ID, "nope"),
        grant_type="authorization_code",
        code=code,
        redirect_uri=DEMO_REDIRECT_URI,
    )
    assert wrong.code == 401
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="Synapse Repository Services"'
    assert body(wrong) == {
        "concreteType": ERROR_RESPONSE,
        "reason": "OAuth Client ID and secret must be passed via Basic Authentication. "
        "Credentials are missing or invalid.",
    }
    assert wrong.body.endswith(b"\n")  # written with println
    missing = await stand.token(auth="none", grant_type="authorization_code", code=code)
    assert missing.code == 401
    assert body(missing)["reason"] == "Missing required credentials in the authorization header."
    in_query = await stand.fetch(
        "/auth/v1/oauth2/token?"
        + urlencode({"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET}),
        "POST",
        form={"grant_type": "authorization_code", "code": code},
    )
    assert in_query.code == 401
    assert "must not be passed as query parameters" in body(in_query)["reason"]


async def test_unregistered_redirect_uri_is_never_redirected_to(stand: Stand) -> None:
    """An unknown client or a redirect_uri not exactly registered gets an error page, not a
    redirect (invalid_client / invalid_redirect_uri).

    Source: OpenIDConnectManagerImpl.validateAuthenticationRequest; RFC 6749 4.1.2.1.
    """
    for params in (
        {"client_id": DEMO_CLIENT_ID, "redirect_uri": DEMO_REDIRECT_URI + "/"},
        {"client_id": DEMO_CLIENT_ID, "redirect_uri": "http://evil.example.org/cb"},
        {"client_id": "no-such-client", "redirect_uri": DEMO_REDIRECT_URI},
    ):
        query = urlencode({"response_type": "code", "scope": "openid", **params})
        response = await stand.fetch("/signin?" + query)
        assert response.code == 400
        assert "Location" not in response.headers
        assert b"text/html" in response.headers["Content-Type"].encode()
    page = await stand.fetch(
        "/signin?"
        + urlencode(
            {"response_type": "code", "client_id": DEMO_CLIENT_ID, "redirect_uri": "http://x.org/"}
        )
    )
    assert b"is not registered for" in page.body


def test_client_registration_needs_valid_redirect_uris() -> None:
    """Redirect URIs must be valid URLs when a client is registered; Synapse's validator has no
    ALLOW_LOCAL_URLS, so ``localhost`` is refused while ``127.0.0.1`` is fine.

    Source: OAuthClientManagerImpl.validateOAuthClientForCreateOrUpdate, ValidateArgument.validUrl.
    """
    local = OAuthClient("c", "s", "App", ["http://localhost:8000/hub/oauth_callback"])
    with pytest.raises(ValueError, match="Redirect URI is not a valid url"):
        SynapseStandIn(clients=[local])  # refused before any key is generated
    with pytest.raises(ValueError, match="at least one redirect URI"):
        SynapseStandIn(clients=[OAuthClient("c", "s", "App", [])])


async def test_bad_scope_is_redirected_as_invalid_scope(stand: Stand) -> None:
    """Once client and redirect_uri are known good, request errors go back to the client:
    an unknown scope is invalid_scope "Unrecognized scope: X".

    Source: OpenIDConnectManagerImpl.parseScopeString.
    """
    query = urlencode(
        {
            "response_type": "code",
            "client_id": DEMO_CLIENT_ID,
            "redirect_uri": DEMO_REDIRECT_URI,
            "scope": "openid admin",
            "state": "st",
        }
    )
    response = await stand.fetch("/signin?" + query)
    assert response.code == 302
    answer = parse_qs(urlsplit(response.headers["Location"]).query)
    assert answer == {
        "error": ["invalid_scope"],
        "error_description": ["Unrecognized scope: admin"],
        "state": ["st"],
    }


async def test_sign_in_page_form_deny_and_unknown_user(stand: Stand) -> None:
    """The sign-in page shows the client and the requested permissions in a plain form;
    Deny redirects with error=access_denied; an unknown user sees the form again.

    Source: OpenIDConnectManagerImpl.getScopeDescription, OAuthPermissionUtils; RFC 6749 4.1.2.1.
    """
    query = urlencode(
        {
            "response_type": "code",
            "client_id": DEMO_CLIENT_ID,
            "redirect_uri": DEMO_REDIRECT_URI,
            "scope": "openid view",
            "claims": json.dumps(hub_claims()),
            "state": "st",
        }
    )
    page = (await stand.fetch("/signin?" + query)).body.decode()
    assert 'id="username"' in page and 'name="username"' in page
    assert 'id="allow" name="consent" value="allow"' in page
    assert 'id="deny" name="consent" value="deny"' in page
    assert "Synapse Notebook Hub (demo)" in page
    assert "To see your team membership" in page
    assert "To view the content which you can view" in page

    denied = await stand.sign_in(consent="deny", state="st")
    assert denied.code == 302
    answer = parse_qs(urlsplit(denied.headers["Location"]).query)
    assert answer["error"] == ["access_denied"] and answer["state"] == ["st"]

    unknown = await stand.sign_in("nobody")
    assert unknown.code == 200
    assert b'id="error"' in unknown.body and b'id="username"' in unknown.body


async def test_redirect_uri_mismatch_at_token_endpoint(stand: Stand) -> None:
    """The token request's redirect_uri must equal the authorization request's:
    invalid_grant "URI mismatch: A vs. B" (400, OAuthErrorResponse).

    Source: OpenIDConnectManagerImpl.generateTokenResponseWithAuthorizationCode,
    BaseControllerExceptionHandlerAdvice.handleOAuthException.
    """
    code = await stand.code()
    other = "http://127.0.0.1:8000/hub/other"
    response = await stand.token(grant_type="authorization_code", code=code, redirect_uri=other)
    assert response.code == 400
    description = f"URI mismatch: {DEMO_REDIRECT_URI} vs. {other}"
    assert body(response) == {
        "concreteType": ERROR_RESPONSE,
        "reason": f"invalid_grant. {description}",
        "error": "invalid_grant",
        "error_description": description,
    }


async def test_code_is_single_use(stand: Stand) -> None:
    """A code is deleted when redeemed: a replay is invalid_grant "Invalid authorization code."
    (Synapse does not revoke the tokens issued from it, so they keep working.)

    Source: OAuthDaoImpl.redeemAuthorizationCode, OpenIDConnectManagerImpl.
    """
    code = await stand.code()
    params = {"grant_type": "authorization_code", "code": code, "redirect_uri": DEMO_REDIRECT_URI}
    first = await stand.token(**params)
    assert first.code == 200
    replay = await stand.token(**params)
    assert replay.code == 400
    assert body(replay)["error"] == "invalid_grant"
    assert body(replay)["error_description"] == "Invalid authorization code."
    still = await stand.fetch("/repo/v1/userProfile", bearer=body(first)["access_token"])
    assert still.code == 200


async def test_code_expires_after_60_seconds(stand: Stand) -> None:
    """A code is valid for one minute: invalid_grant "Authorization code has expired."

    Source: OpenIDConnectManagerImpl.AUTHORIZATION_CODE_TIME_LIMIT_MILLIS.
    """
    fresh = await stand.code()
    await stand.control("/clock/advance", "POST", {"seconds": 59})
    ok = await stand.token(
        grant_type="authorization_code", code=fresh, redirect_uri=DEMO_REDIRECT_URI
    )
    assert ok.code == 200
    stale = await stand.code()
    await stand.control("/clock/advance", "POST", {"seconds": 61})
    late = await stand.token(
        grant_type="authorization_code", code=stale, redirect_uri=DEMO_REDIRECT_URI
    )
    assert late.code == 400
    assert body(late)["error_description"] == "Authorization code has expired."


# -- tokens --------------------------------------------------------------------------------------
async def test_access_token_claims_and_24_hour_lifetime(stand: Stand) -> None:
    """The access token carries access.scope and access.oidc_claims (the userinfo claims
    request), token_type OIDC_ACCESS_TOKEN, aud = client id, and lives 24 h; after that it is
    401 invalid_token "The token has expired.".

    Source: OIDCTokenManagerImpl.createOIDCaccessToken, ClaimsJsonUtil.addAccessClaims,
    AuthorizationConstants.ACCESS_TOKEN_EXPIRATION_TIME_SECONDS, JSONWebTokenHelper.
    """
    tokens = await stand.tokens(scope="openid view", claims=hub_claims([DEMO_AD_TEAM_ID]))
    claims = unverified(tokens["access_token"])
    assert list(claims) == [
        "access",
        "auth_time",
        "iss",
        "aud",
        "exp",
        "nbf",
        "iat",
        "jti",
        "sub",
        "token_type",
    ]
    assert claims["access"]["scope"] == ["openid", "view"]
    assert claims["access"]["oidc_claims"]["userid"] is None
    assert claims["access"]["oidc_claims"]["team"]["values"] == [DEMO_AD_TEAM_ID]
    assert claims["token_type"] == "OIDC_ACCESS_TOKEN"
    assert claims["aud"] == DEMO_CLIENT_ID
    assert claims["iss"] == stand.base + "/auth/v1"
    assert claims["exp"] - claims["iat"] == 24 * 3600
    assert claims["sub"] != "3400001"  # pairwise subject, not the user id

    await stand.control("/clock/advance", "POST", {"seconds": 24 * 3600 - 60})
    ok = await stand.fetch("/auth/v1/oauth2/userinfo", bearer=tokens["access_token"])
    assert ok.code == 200
    await stand.control("/clock/advance", "POST", {"seconds": 120})
    expired = await stand.fetch("/auth/v1/oauth2/userinfo", bearer=tokens["access_token"])
    assert expired.code == 401
    assert body(expired) == {
        "concreteType": ERROR_RESPONSE,
        "reason": "invalid_token. The token has expired.",
        "error": "invalid_token",
        "error_description": "The token has expired.",
    }
    assert expired.headers["WWW-Authenticate"] == 'Bearer realm="Synapse Repository Services"'


async def test_id_token_lifetime_nonce_and_claims(stand: Stand) -> None:
    """The id token lives 60 s, carries the nonce, token_type OIDC_ID_TOKEN, the claims asked
    for id_token, plus those implied by the email and profile scopes.

    Source: OIDCTokenManagerImpl.createOIDCIdToken (ID_TOKEN_EXPIRATION_TIME_SECONDS),
    OpenIDConnectManagerImpl.getUserInfo (EMAIL_CLAIMS, PROFILE_CLAIMS).
    """
    claims_request = {"id_token": {"userid": None, "is_certified": None}, "userinfo": {}}
    tokens = await stand.tokens(
        "bob", scope="openid email profile", claims=claims_request, nonce="n-0S6"
    )
    claims = unverified(tokens["id_token"])
    assert claims["exp"] - claims["iat"] == 60
    assert claims["nonce"] == "n-0S6"
    assert claims["token_type"] == "OIDC_ID_TOKEN"
    assert claims["aud"] == DEMO_CLIENT_ID
    assert claims["userid"] == "3400002"
    assert claims["is_certified"] is True
    assert claims["email"] == "bob@example.org" and claims["email_verified"] is True
    assert claims["given_name"] == "Bob" and claims["family_name"] == "Biologist"
    assert claims["user_name"] == "bob"
    assert "company" not in claims  # no value: left out, not null
    assert isinstance(claims["auth_time"], int)
    no_openid = await stand.tokens(scope="view")
    assert "id_token" not in no_openid


async def test_refresh_token_only_with_offline_access(stand: Stand) -> None:
    """A refresh token is issued only when offline_access was granted, and its access tokens
    carry refresh_token_id.

    Source: OpenIDConnectManagerImpl.generateTokenResponseWithAuthorizationCode,
    OIDCClaimName.json (refresh_token_id).
    """
    without = await stand.tokens(scope="openid view")
    assert "refresh_token" not in without
    assert "refresh_token_id" not in unverified(without["access_token"])
    with_offline = await stand.tokens(scope="openid view offline_access")
    assert with_offline["refresh_token"]
    assert unverified(with_offline["access_token"])["refresh_token_id"]


async def test_refresh_rotates_and_old_token_is_refused(stand: Stand) -> None:
    """Refresh tokens are single use: each refresh returns a new one and the old one becomes
    invalid (a plain 400 "The token does not match an existing token."); the chain keeps its
    refresh_token_id, earlier access tokens stay valid, scope can narrow but not widen.

    Source: OAuthRefreshTokenManagerImpl.rotateRefreshToken, OpenIDConnectManagerImpl
    .generateTokenResponseWithRefreshToken, OpenIDConnectController.getTokenResponse (javadoc).
    """
    first = await stand.tokens(scope="openid view offline_access", claims=hub_claims())
    refreshed = await stand.refresh(first["refresh_token"])
    assert refreshed.code == 200, refreshed.body
    second = body(refreshed)
    assert second["refresh_token"] != first["refresh_token"]
    assert "id_token" in second and "nonce" not in unverified(second["id_token"])
    chain = unverified(first["access_token"])["refresh_token_id"]
    assert unverified(second["access_token"])["refresh_token_id"] == chain

    reused = await stand.refresh(first["refresh_token"])
    assert reused.code == 400
    assert body(reused) == {
        "concreteType": ERROR_RESPONSE,
        "reason": "The token does not match an existing token.",
    }
    assert (await stand.fetch("/repo/v1/userProfile", bearer=first["access_token"])).code == 200

    wider = await stand.refresh(second["refresh_token"], scope="openid view modify")
    assert wider.code == 400 and body(wider)["error"] == "invalid_scope"
    narrower = await stand.refresh(second["refresh_token"], scope="view")  # not rotated above
    assert narrower.code == 200
    narrowed = body(narrower)
    assert "id_token" not in narrowed
    assert unverified(narrowed["access_token"])["access"] == {"scope": ["view"], "oidc_claims": {}}

    other_client = await stand.refresh(narrowed["refresh_token"])
    assert other_client.code == 200
    stolen = await stand.token(
        client=(OTHER_CLIENT.client_id, OTHER_CLIENT.client_secret),
        grant_type="refresh_token",
        refresh_token=body(other_client)["refresh_token"],
    )
    assert stolen.code == 400 and body(stolen)["error"] == "invalid_grant"


async def test_refresh_token_expires_after_180_days_unused(stand: Stand) -> None:
    """A refresh token unused for 180 days is invalid_grant "The refresh token has expired.";
    each use restarts the lease.

    Source: OAuthRefreshTokenManagerImpl.REFRESH_TOKEN_LEASE_DURATION_DAYS,
    OAuthRefreshTokenDaoImpl.isTokenActive.
    """
    tokens = await stand.tokens(scope="openid offline_access")
    await stand.control("/clock/advance", "POST", {"seconds": 179 * 86400})
    used = await stand.refresh(tokens["refresh_token"])
    assert used.code == 200
    await stand.control("/clock/advance", "POST", {"seconds": 179 * 86400})
    again = await stand.refresh(body(used)["refresh_token"])
    assert again.code == 200
    await stand.control("/clock/advance", "POST", {"seconds": 181 * 86400})
    expired = await stand.refresh(body(again)["refresh_token"])
    assert expired.code == 400
    assert body(expired)["error"] == "invalid_grant"
    assert body(expired)["error_description"] == "The refresh token has expired."


async def test_revoked_refresh_token_cannot_refresh_and_kills_its_access_tokens(
    stand: Stand,
) -> None:
    """Revoking a refresh token (204) stops it from refreshing and invalidates every access
    token issued from it: 401 invalid_token "The access token has been revoked.".

    Source: OpenIDConnectManagerImpl.revokeToken / validateAccessToken,
    OpenIDConnectController.revokeToken, OAuthTokenRevocationRequest.json.
    """
    tokens = await stand.tokens(scope="openid view offline_access", claims=hub_claims())
    revoked = await stand.revoke(tokens["refresh_token"], "refresh_token")
    assert revoked.code == 204
    refused = await stand.refresh(tokens["refresh_token"])
    assert refused.code == 400
    assert body(refused)["reason"] == "The token does not match an existing token."
    dead = await stand.fetch("/auth/v1/oauth2/userinfo", bearer=tokens["access_token"])
    assert dead.code == 401
    assert body(dead)["error_description"] == "The access token has been revoked."
    again = await stand.revoke(tokens["refresh_token"], "refresh_token")
    assert again.code == 404


async def test_revoke_by_access_token(stand: Stand) -> None:
    """token_type_hint access_token revokes the token's refresh token (and with it the access
    token); a token without a refresh token is revoked alone.

    Source: OpenIDConnectManagerImpl.revokeToken, TokenTypeHint in
    OAuthTokenRevocationRequest.json.
    """
    chained = await stand.tokens(scope="openid view offline_access")
    assert (await stand.revoke(chained["access_token"], "access_token")).code == 204
    assert (await stand.refresh(chained["refresh_token"])).code == 400
    lone = await stand.tokens(scope="openid view")
    assert (await stand.revoke(lone["access_token"], "access_token")).code == 204
    gone = await stand.fetch("/repo/v1/userProfile", bearer=lone["access_token"])
    assert gone.code == 401
    bad_hint = await stand.revoke(lone["access_token"], "id_token")
    assert bad_hint.code == 400


# -- userinfo and claims ----------------------------------------------------------------------
async def test_userinfo_reflects_a_live_team_change(stand: Stand) -> None:
    """userinfo recomputes claims at each call, so a team change made after sign-in shows at
    the next call (GET and POST alike); sub is added.

    Source: OpenIDConnectManagerImpl.getUserInfo, TeamClaimProvider (GroupMembersDAO at request
    time), OpenIDConnectController.getUserInfoGET/POST.
    """
    tokens = await stand.tokens("bob", claims=hub_claims())
    before = body(await stand.fetch("/auth/v1/oauth2/userinfo", bearer=tokens["access_token"]))
    assert before["team"] == [DEMO_AD_TEAM_ID, DEMO_NF_TEAM_ID]
    assert before["userid"] == "3400002" and before["user_name"] == "bob"
    assert before["sub"] == unverified(tokens["access_token"])["sub"]

    left = await stand.control(f"/teams/{DEMO_NF_TEAM_ID}/members/3400002", "DELETE")
    assert left.code == 204
    joined = await stand.control(f"/teams/{DEMO_ADMIN_TEAM_ID}/members/3400002", "PUT")
    assert joined.code == 204
    after = await stand.fetch("/auth/v1/oauth2/userinfo", "POST", bearer=tokens["access_token"])
    assert after.code == 200
    assert body(after)["team"] == [DEMO_ADMIN_TEAM_ID, DEMO_AD_TEAM_ID]


async def test_team_claim_returns_only_the_requested_subset(stand: Stand) -> None:
    """The team claim returns the requested team ids the user is in, never other teams;
    unrecognised claim names are dropped; team ids sent as numbers are accepted.

    Source: TeamClaimProvider.getClaim, OpenIDConnectManagerImpl.normalizeClaims.
    """
    request = {
        "userinfo": {"team": {"values": [3500001, "3500002", "3500099"]}, "shoe_size": None},
        "id_token": {"team": {"value": "3500002"}},
    }
    tokens = await stand.tokens("mallory", claims=request)
    info = body(await stand.fetch("/auth/v1/oauth2/userinfo", bearer=tokens["access_token"]))
    assert info["team"] == [DEMO_UNRELATED_TEAM_ID]
    assert "shoe_size" not in unverified(tokens["access_token"])["access"]["oidc_claims"]
    assert unverified(tokens["id_token"])["team"] == []
    alice = await stand.tokens("alice", claims=hub_claims([DEMO_NF_TEAM_ID, DEMO_ADMIN_TEAM_ID]))
    alice_info = body(await stand.fetch("/auth/v1/oauth2/userinfo", bearer=alice["access_token"]))
    assert alice_info["team"] == [DEMO_ADMIN_TEAM_ID]  # not 3500001, which was not asked for


async def test_userinfo_needs_openid_and_a_valid_token(stand: Stand) -> None:
    """userinfo requires the openid scope (403 insufficient_scope); a malformed token is
    401 "Invalid access token"; an id token is not an access token.

    Source: OpenIDConnectController (@RequiredScope openid), OAuthScopeInterceptor,
    AuthenticationFilter, OpenIDConnectManagerImpl.validateAccessToken.
    """
    view_only = await stand.tokens(scope="view")
    forbidden = await stand.fetch("/auth/v1/oauth2/userinfo", bearer=view_only["access_token"])
    assert forbidden.code == 403
    assert body(forbidden)["error"] == "insufficient_scope"
    garbage = await stand.fetch("/auth/v1/oauth2/userinfo", bearer="not.a.token")
    assert garbage.code == 401
    assert body(garbage) == {"concreteType": ERROR_RESPONSE, "reason": "Invalid access token"}
    with_id = await stand.tokens()
    id_as_access = await stand.fetch("/auth/v1/oauth2/userinfo", bearer=with_id["id_token"])
    assert id_as_access.code == 401
    assert body(id_as_access)["error"] == "invalid_token"


async def test_signed_userinfo_for_clients_that_registered_it(signing_key: SigningKey) -> None:
    """A client registered with userinfo_signed_response_alg gets userinfo as a signed JWT.

    Source: OpenIDConnectManagerImpl.getUserInfo, OAuthClient.json.
    """
    client = demo_client()
    client.userinfo_signed_response_alg = "RS256"
    standin, server, base = await serve(clients=[client], signing_key=signing_key)
    http = AsyncHTTPClient(force_instance=True)
    try:
        stand = Stand(standin, base, http)
        tokens = await stand.tokens(claims={"userinfo": {"userid": None}})
        response = await stand.fetch("/auth/v1/oauth2/userinfo", bearer=tokens["access_token"])
        assert response.code == 200
        assert response.headers["Content-Type"] == "application/jwt"
        claims = jwt.decode(
            response.body.decode(),
            signing_key.public_key,
            algorithms=["RS256"],
            audience=DEMO_CLIENT_ID,
        )
        assert claims["userid"] == "3400001"
    finally:
        http.close()
        server.stop()
        await server.close_all_connections()


# -- REST ---------------------------------------------------------------------------------------
async def test_user_profile_needs_view_scope(stand: Stand) -> None:
    """GET /userProfile needs the view scope: 403 insufficient_scope otherwise; with it, the
    caller's UserProfile including private fields.

    Source: UserProfileController.getMyOwnUserProfile (@RequiredScope view),
    OAuthScopeInterceptor, UserProfile.json.
    """
    no_view = await stand.tokens(scope="openid")
    denied = await stand.fetch("/repo/v1/userProfile", bearer=no_view["access_token"])
    assert denied.code == 403
    reason = "Request lacks scope(s) required by this service: view"
    assert body(denied) == {
        "concreteType": ERROR_RESPONSE,
        "reason": f"insufficient_scope. {reason}",
        "error": "insufficient_scope",
        "error_description": reason,
    }
    with_view = await stand.tokens(scope="openid view")
    profile = body(await stand.fetch("/repo/v1/userProfile", bearer=with_view["access_token"]))
    assert profile["ownerId"] == "3400001"
    assert profile["userName"] == "alice"
    assert profile["firstName"] == "Alice" and profile["lastName"] == "Analyst"
    assert profile["emails"] == ["alice@example.org"]
    assert "etag" in profile and "createdOn" in profile
    other = body(
        await stand.fetch("/repo/v1/userProfile/3400002", bearer=with_view["access_token"])
    )
    assert other["userName"] == "bob" and "emails" not in other


async def test_membership_status(stand: Stand) -> None:
    """GET /team/{id}/member/{userId}/membershipStatus (scope view) answers a
    TeamMembershipStatus; unknown principals and teams are 404.

    Source: TeamController.getTeamMembershipStatus, TeamManagerImpl.getTeamMembershipStatus,
    TeamMembershipStatus.json, DBOUserGroupDAOImpl, DBOTeamDAOImpl.
    """
    tokens = await stand.tokens(scope="openid view")
    path = f"/repo/v1/team/{DEMO_AD_TEAM_ID}/member/3400002/membershipStatus"
    status = body(await stand.fetch(path, bearer=tokens["access_token"]))
    assert status == {
        "teamId": DEMO_AD_TEAM_ID,
        "userId": "3400002",
        "isMember": True,
        "hasOpenInvitation": False,
        "hasOpenRequest": False,
        "canJoin": True,
        "membershipApprovalRequired": True,
        "hasUnmetAccessRequirement": False,
        "canSendEmail": True,
    }
    outsider = f"/repo/v1/team/{DEMO_ADMIN_TEAM_ID}/member/3400003/membershipStatus"
    assert body(await stand.fetch(outsider, bearer=tokens["access_token"]))["isMember"] is False
    missing = await stand.fetch(
        "/repo/v1/team/999/member/3400002/membershipStatus", bearer=tokens["access_token"]
    )
    assert missing.code == 404
    assert body(missing)["reason"] == "Team id: '999' does not exist"
    nobody = await stand.fetch(
        f"/repo/v1/team/{DEMO_AD_TEAM_ID}/member/42/membershipStatus", bearer=tokens["access_token"]
    )
    assert nobody.code == 404
    no_view = await stand.tokens(scope="openid")
    assert (await stand.fetch(path, bearer=no_view["access_token"])).code == 403


# -- control API --------------------------------------------------------------------------------
async def test_fault_injection(stand: Stand) -> None:
    """Not Synapse: the control API makes the next N matching requests fail with a chosen
    status and body, or stall, then the real answers return.
    """
    fault = await stand.control(
        "/faults",
        "POST",
        {"path": "/auth/v1/oauth2/token", "count": 2, "status": 503, "body": {"reason": "x"}},
    )
    assert fault.code == 201
    code = await stand.code()
    params = {"grant_type": "authorization_code", "code": code, "redirect_uri": DEMO_REDIRECT_URI}
    for _ in range(2):
        failed = await stand.token(**params)
        assert failed.code == 503 and body(failed) == {"reason": "x"}
    assert (await stand.token(**params)).code == 200  # the code was not consumed by the faults

    await stand.control("/faults", "POST", {"path": "/auth/v1/oauth2/*", "delay": 0.3})
    started = time.monotonic()
    slow = await stand.fetch("/auth/v1/oauth2/jwks")
    assert slow.code == 200 and time.monotonic() - started >= 0.3
    assert body(await stand.control("/faults"))["faults"] == []


async def test_control_api_lists_users_codes_and_tokens(stand: Stand) -> None:
    """Not Synapse: users can be added at run time and sign in; outstanding codes and issued
    tokens are listed for assertions (refresh tokens by metadata, never by value).
    """
    added = await stand.control(
        "/users",
        "POST",
        {
            "userId": "3400077",
            "userName": "carol",
            "firstName": "Carol",
            "lastName": "Curator",
            "email": "carol@example.org",
            "teams": [DEMO_NF_TEAM_ID],
        },
    )
    assert added.code == 201
    code = await stand.code("carol@example.org")
    codes = body(await stand.control("/codes"))["codes"]
    assert [c["code"] for c in codes] == [code] and codes[0]["user_id"] == "3400077"
    await stand.token(grant_type="authorization_code", code=code, redirect_uri=DEMO_REDIRECT_URI)
    await stand.tokens("carol", scope="openid offline_access")
    issued = body(await stand.control("/tokens"))
    assert {t["principal_id"] for t in issued["access_tokens"]} == {"3400077"}
    assert len(issued["refresh_tokens"]) == 1 and issued["refresh_tokens"][0]["active"]
    assert body(await stand.control("/codes"))["codes"] == []


# -- real clients -------------------------------------------------------------------------------
async def test_synapseclient_logs_in_with_an_issued_access_token(
    stand: Stand, tmp_path: Path
) -> None:
    """The real synapseclient logs in with an access token from the stand-in and reports the
    right user name (it calls GET /repo/v1/userProfile; the token needs the view scope).

    Source: synapseclient core/credentials/credential_provider.py and cred_data.py;
    UserProfileController.
    """
    synapseclient = pytest.importorskip("synapseclient", reason="synapseclient is not installed")
    import requests

    tokens = await stand.tokens("bob", scope="openid view download modify")

    def log_in() -> tuple[str, str]:
        config = tmp_path / "synapseConfig"
        config.write_text("")
        session = requests.Session()
        session.trust_env = False
        syn = synapseclient.Synapse(
            repoEndpoint=stand.base + "/repo/v1",
            authEndpoint=stand.base + "/auth/v1",
            fileHandleEndpoint=stand.base + "/file/v1",
            portalEndpoint=stand.base + "/",
            skip_checks=True,
            configPath=str(config),
            cache_root_dir=str(tmp_path / "cache"),
            requests_session=session,
            cache_client=False,
            silent=True,
        )
        syn.login(authToken=tokens["access_token"], silent=True)
        return syn.credentials.username, syn.restGET("/userProfile/")["ownerId"]

    username, owner_id = await asyncio.to_thread(log_in)
    assert (username, owner_id) == ("bob", "3400002")


async def test_command_line_prints_base_url() -> None:
    """``python -m localcloud.synapse --port 0`` prints its base URL and serves discovery."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "localcloud.synapse",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    http = AsyncHTTPClient(force_instance=True)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=15)
        base_url = line.decode().strip()
        assert base_url.startswith("http://127.0.0.1:")
        response = await http.fetch(base_url + "/auth/v1/.well-known/openid-configuration")
        assert json.loads(response.body)["issuer"] == base_url + "/auth/v1"
    finally:
        http.close()
        proc.terminate()
        await proc.wait()
