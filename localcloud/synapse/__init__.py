"""A stand-in for Synapse's OIDC server and the REST calls the hub makes, for tests and the demo.

Synapse (Sage Bionetworks) is not reachable from this machine, so the hub signs users in
against this Tornado app instead. It behaves as Synapse's public source defines it; every rule
below names the file of Sage-Bionetworks/Synapse-Repository-Services it comes from (read at
commit ae9a4d8e, Oct 2024). Paths are relative to ``http://127.0.0.1:<port>``; the issuer is
``<base>/auth/v1``.

Rules the stand-in follows
--------------------------
Discovery and keys
  * ``GET /auth/v1/.well-known/openid-configuration``: issuer, endpoints (token, userinfo,
    revocation, jwks, registration under the issuer; authorization at ``<base>/signin``,
    standing in for https://signin.synapse.org), scopes_supported = the eight OAuthScope
    values, response_types ``code``, grant_types ``authorization_code``/``refresh_token``,
    subject_types ``pairwise``, RS256 for id tokens and userinfo, claims_supported = all
    OIDCClaimName values, claims_parameter_supported, token endpoint auth
    ``client_secret_basic``/``client_secret_post`` (OpenIDConnectServiceImpl.
    getOIDCConfiguration, OIDConnectConfiguration.json, OAuthScope.json, OIDCClaimName.json).
  * ``GET /auth/v1/oauth2/jwks``: one RSA key, ``kid`` = base32 SHA-256 of the SPKI, grouped
    by four (KeyPairUtil.java, JsonWebKeyRSA.json). Tokens are RS256 with ``typ``/``kid``
    headers (OIDCTokenManagerImpl.createSignedJWT).

Authorization (``/signin``, see pages.py)
  * unknown client ``invalid_client``; ``redirect_uri`` must be a valid URL and exactly one of
    the client's registered URIs (``invalid_redirect_uri``); ``response_type`` must be ``code``;
    unknown scope ``invalid_scope``; unknown claim names dropped
    (OpenIDConnectManagerImpl.validateAuthenticationRequest, parseScopeString, normalizeClaims).
  * a client's redirect URIs must be valid URLs when it is registered; Synapse's validator has
    no ALLOW_LOCAL_URLS, so ``http://localhost:...`` is refused and ``http://127.0.0.1:...`` is
    fine (OAuthClientManagerImpl.validateOAuthClientForCreateOrUpdate, ValidateArgument.validUrl).
  * codes are UUIDs, valid 60 s, single use, deleted on first redemption even if the token
    request then fails (OpenIDConnectManagerImpl AUTHORIZATION_CODE_TIME_LIMIT_MILLIS,
    OAuthDaoImpl.redeemAuthorizationCode).

Token endpoint ``POST /auth/v1/oauth2/token``
  * client authentication by HTTP Basic, or ``client_id``/``client_secret`` form parameters
    when there is no Authorization header; a secret in the query string is refused; failures
    are 401 ``{"concreteType": "...ErrorResponse", "reason": "OAuth Client ID and secret must be
    passed via Basic Authentication. Credentials are missing or invalid."}`` (or "Missing
    required credentials in the authorization header.") with ``WWW-Authenticate``
    (OAuthClientAuthFilter, BasicAuthenticationFilter, HttpAuthUtil.reject). Successful
    answers carry ``Cache-Control: no-store`` and ``Pragma: no-cache``.
  * ``authorization_code``: the ``redirect_uri`` must equal the authorize request's
    (``invalid_grant "URI mismatch: A vs. B"``); replayed code ``invalid_grant "Invalid
    authorization code."``; expired code ``invalid_grant "Authorization code has expired."``;
    another client's code ``invalid_grant`` (generateTokenResponseWithAuthorizationCode).
  * response ``{access_token, refresh_token?, id_token?, token_type: "Bearer", expires_in:
    86400}``; ``id_token`` only with ``openid``; ``refresh_token`` only with
    ``offline_access`` (OIDCTokenResponse.json, OpenIDConnectManagerImpl,
    AuthorizationConstants.ACCESS_TOKEN_EXPIRATION_TIME_SECONDS).
  * access token (24 h) claims: ``access: {scope: [...], oidc_claims: {name: null | {essential,
    value, values}}}``, ``auth_time``, ``iss``, ``aud`` (= client id), ``exp``, ``nbf``,
    ``iat``, ``jti``, ``sub``, ``token_type: OIDC_ACCESS_TOKEN``, ``refresh_token_id`` when
    issued with a refresh token (OIDCTokenManagerImpl.createOIDCaccessToken,
    ClaimsJsonUtil.addAccessClaims, TokenType.json). The ``oidc_claims`` are the claims
    requested for ``userinfo``.
  * id token (60 s, ID_TOKEN_EXPIRATION_TIME_SECONDS): the claims requested for ``id_token``
    plus those implied by the ``email``/``profile`` scopes, then ``auth_time``, ``iss``,
    ``aud``, ``exp``, ``nbf``, ``iat``, ``jti``, ``sub``, ``token_type: OIDC_ID_TOKEN``,
    ``nonce`` (OIDCTokenManagerImpl.createOIDCIdToken).
  * ``sub`` is a pairwise id (the user id AES-encrypted per client), not the user id: read the
    ``userid`` claim (OpenIDConnectManagerImpl.ppid, AESEncryptionUtils).
  * ``refresh_token``: single use and rotated at every use (same token id, new value; the old
    value is a plain 400 ``"The token does not match an existing token."``), expires after
    180 days unused (``invalid_grant "The refresh token has expired."``), ``scope`` may narrow
    (a scope not granted is ``invalid_scope``), at most 100 per user and client; earlier access
    tokens of the chain stay valid (OAuthRefreshTokenManagerImpl, generateTokenResponseWith
    RefreshToken, the token endpoint's documentation in OpenIDConnectController).

Claims (claims.py)
  * ``userid`` (string), ``user_name``, ``email``, ``email_verified`` (always true),
    ``given_name``, ``family_name``, ``company``, ``orcid``, ``is_certified``,
    ``is_validated``, ``validated_at`` and ``validated_*`` (validated users only); ``team``
    takes ``value``/``values`` and returns only the requested ids the user is in
    (claimprovider/*ClaimProvider.java). Values are read at request time, so userinfo sees a
    team change at the next call. Claims without a value are left out.

Using tokens: ``/auth/v1/oauth2/userinfo`` and ``/repo/v1/*``
  * bearer token from ``Authorization: Bearer`` (or the ``sessionToken`` header); no token
    means the anonymous user. A token that does not parse or verify: 401 ``{"reason": "Invalid
    access token"}``; expired: 401 ``invalid_token "The token has expired."``; revoked (its
    record gone or its refresh token revoked): 401 ``invalid_token "The access token has been
    revoked."``; an id token: 401 ``invalid_token`` (AuthenticationFilter,
    JSONWebTokenHelper.parseJWT, OpenIDConnectManagerImpl.validateAccessToken).
  * each method's @RequiredScope must be in the token's scopes, else 403 ``insufficient_scope
    "Request lacks scope(s) required by this service: view"`` (OAuthScopeInterceptor).
  * error bodies are ``{"concreteType": "org.sagebionetworks.repo.model.ErrorResponse",
    "reason": ...}`` plus ``error``/``error_description`` for OAuth errors, where ``reason`` is
    ``"<error>. <description>"`` (BaseControllerExceptionHandlerAdvice, OAuthErrorResponse.json,
    AuthenticationFilterTest, OAuthScopeInterceptorTest).
  * userinfo (GET and POST, scope ``openid``): the claims requested for ``userinfo``, plus
    ``sub``, as JSON; a signed JWT (``application/jwt``) if the client registered
    ``userinfo_signed_response_alg`` (OpenIDConnectManagerImpl.getUserInfo).
  * ``GET /repo/v1/userProfile`` (scope ``view``): the caller's UserProfile with private fields
    (UserProfileController, UserProfile.json); ``GET /repo/v1/userProfile/{id}`` without them
    (PrivateFieldUtils).
  * ``GET /repo/v1/team/{id}/member/{userId}/membershipStatus`` (scope ``view``):
    TeamMembershipStatus (TeamController, TeamManagerImpl.getTeamMembershipStatus).

Revocation ``POST /auth/v1/oauth2/revoke``
  * client authentication as for the token endpoint (HTTP Basic in practice: the body is JSON);
    body ``{"token": ..., "token_type_hint": "access_token" | "refresh_token"}``; 204 on
    success. Revoking a refresh token, or an access token that has one, revokes the refresh
    token and so every access token issued from it; another client's token is 403; an unknown
    refresh token 404 (OpenIDConnectController.revokeToken, OpenIDConnectManagerImpl.
    revokeToken, OAuthTokenRevocationRequest.json).

Where the stand-in differs from Synapse on purpose
--------------------------------------------------
  * The discovery document's ``authorization_endpoint`` is the stand-in's own ``/signin``
    page instead of https://signin.synapse.org.
  * The sign-in page asks for a user name only (no password, no 2FA) and asks for consent every
    time; real Synapse skips consent already given within a year.
  * Revoking an access token that has no refresh token removes that token. Synapse's code
    passes the token's id where a JWT is expected (OIDCTokenManagerImpl.revokeOIDCAccessToken)
    and so answers 400; the stand-in follows the documented intent instead.
  * Client ids are whatever the constructor is given (the demo's is ``notebook-hub-demo``);
    Synapse's are numeric.
  * Spring's own messages (missing/invalid ``grant_type``) are paraphrased. A revocation without
    ``token_type_hint`` is a 500, as in Synapse (a NullPointerException there).
  * Teams have no invitations, join requests, access requirements or team admins.

Control API (not Synapse): ``/_control/`` (see control.py), loopback only: users, team
membership, the clock (all expiry reads :class:`Clock`), fault injection, issued codes/tokens.

synapseclient against the stand-in
----------------------------------
``synapseclient`` (checked with 4.5 and 4.14) logs in with ``Synapse.login(authToken=...)``
by calling only ``GET <repoEndpoint>/userProfile`` with the token as a bearer token
(core/credentials/credential_provider.py); the token must have the ``view`` scope (it reads
``access.scope`` from the JWT itself, cred_data.py). ``getUserProfile()`` asks for
``/userProfile/`` (trailing slash, which Spring and the stand-in accept). Configure it so it
never leaves the machine::

    syn = synapseclient.Synapse(
        repoEndpoint=base_url + "/repo/v1",
        authEndpoint=base_url + "/auth/v1",
        fileHandleEndpoint=base_url + "/file/v1",
        portalEndpoint=base_url + "/",
        skip_checks=True,             # no endpoint probing, no version check at login
        configPath=empty_config_file,  # not ~/.synapseConfig (endpoints, tokens, cache)
        cache_root_dir=tmp_dir,        # not ~/.synapseCache
        requests_session=session,      # a requests.Session() with trust_env = False
        cache_client=False,
        silent=True,
    )
    syn.login(authToken=access_token, silent=True)

``skip_checks=True`` is what stops the version check (a GET to raw.githubusercontent.com in
core/version_check.py) and the redirect probe of each endpoint in ``setEndpoints``. The
credential chain reads ``SYNAPSE_AUTH_TOKEN`` and ``SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME``
only when ``login`` gets no token and the config file has none; keep both unset anyway.
Telemetry: synapseclient only records OpenTelemetry spans; nothing is exported unless the
application calls ``Synapse.enable_open_telemetry()`` (4.14, core/otel_config.py) or installs
an exporter itself; ``OTEL_SDK_DISABLED=true`` makes sure. ``SYNAPSE_PROFILE`` (4.14) selects a
config-file profile; with an empty config file it has nothing to select.
``trust_env = False`` keeps ``HTTP(S)_PROXY`` variables from routing loopback calls elsewhere.

Run standalone: ``python -m localcloud.synapse --port 8100`` prints the base URL.
"""

from .app import SynapseStandIn
from .clock import Clock
from .directory import (
    Directory,
    OAuthClient,
    SynapseTeam,
    SynapseUser,
    demo_client,
    demo_directory,
)
from .keys import SigningKey
from .server import make_app, serve

__all__ = [
    "Clock",
    "Directory",
    "OAuthClient",
    "SigningKey",
    "SynapseStandIn",
    "SynapseTeam",
    "SynapseUser",
    "demo_client",
    "demo_directory",
    "make_app",
    "serve",
]
