"""Synapse's error responses, as exceptions that render to Synapse's wire bytes.

Synapse turns Java exceptions into HTTP errors in two places, and the stand-in keeps both:

* the controller advice (``BaseControllerExceptionHandlerAdvice``) maps exception classes to
  statuses: ``IllegalArgumentException`` 400, ``NotFoundException`` 404,
  ``UnauthorizedException`` 403 (sic: Synapse's "unauthorized" means forbidden),
  ``OAuthBadRequestException`` 400, ``OAuthUnauthenticatedException`` 401,
  ``OAuthForbiddenException`` 403, ``OAuthClientNotVerifiedException`` 403 with
  ``errorCode: OAUTH_CLIENT_NOT_VERIFIED``, anything else 500;
* the servlet filters (``AuthenticationFilter``, ``OAuthClientAuthFilter``,
  ``OAuthScopeInterceptor``) answer before any controller via ``HttpAuthUtil.reject``: content
  type ``application/json``, a ``WWW-Authenticate: Bearer realm="Synapse Repository Services"``
  header on 401, and the body written with ``println`` (so it ends in a newline).

The body is an ``ErrorResponse`` (``{"concreteType": ..., "reason": ...}``) or, for OAuth
errors, an ``OAuthErrorResponse`` which adds ``error`` and ``error_description`` and sets
``reason`` to ``"<error>. <error_description>"`` (or just ``"<error>"``). Synapse's own tests
pin the bytes, including that ``concreteType`` stays ``org.sagebionetworks.repo.model.
ErrorResponse`` for OAuth errors (AuthenticationFilterTest, OAuthScopeInterceptorTest,
HttpAuthUtilTest). Fields that are null are left out.
"""

from __future__ import annotations

import json
from typing import Any

ERROR_RESPONSE_TYPE = "org.sagebionetworks.repo.model.ErrorResponse"
WWW_AUTHENTICATE = 'Bearer realm="Synapse Repository Services"'


def dumps(obj: Any) -> bytes:
    """JSON the way Synapse's org.json writer emits it: compact, UTF-8, no ASCII escaping."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class SynapseError(Exception):
    """Base of all errors the stand-in answers with; ``status`` is the HTTP status."""

    status = 500

    def __init__(self, reason: str, *, error_code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_code = error_code

    def body(self) -> dict[str, Any]:
        """The JSON object Synapse sends, in Synapse's key order."""
        body: dict[str, Any] = {"concreteType": ERROR_RESPONSE_TYPE, "reason": self.reason}
        if self.error_code is not None:
            body["errorCode"] = self.error_code
        return body


class IllegalArgument(SynapseError):
    """Java ``IllegalArgumentException`` (and ``ValidateArgument`` failures): 400."""

    status = 400


class NotFound(SynapseError):
    """``NotFoundException``: 404."""

    status = 404


class Forbidden(SynapseError):
    """Synapse's ``UnauthorizedException`` / ``ForbiddenException``: 403."""

    status = 403


class ServerError(SynapseError):
    """An unexpected exception on the Synapse side (e.g. a NullPointerException): 500."""

    status = 500


class ClientNotVerified(SynapseError):
    """``OAuthClientNotVerifiedException``: 403 with ``errorCode`` OAUTH_CLIENT_NOT_VERIFIED."""

    status = 403

    def __init__(self, client_id: str) -> None:
        super().__init__(
            f"The OAuth client ({client_id}) is not verified.",
            error_code="OAUTH_CLIENT_NOT_VERIFIED",
        )


class OAuthError(SynapseError):
    """``OAuthException``: an RFC 6749 error code plus an optional description."""

    status = 400

    def __init__(self, error: str, description: str | None = None) -> None:
        super().__init__(f"{error}. {description}" if description is not None else error)
        self.error = error
        self.description = description

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"] = self.error
        if self.description is not None:
            body["error_description"] = self.description
        return body


class OAuthBadRequest(OAuthError):
    """``OAuthBadRequestException``: 400 (invalid_grant, invalid_scope, ...)."""

    status = 400


class OAuthUnauthenticated(OAuthError):
    """``OAuthUnauthenticatedException``: 401 (invalid_token, login_required)."""

    status = 401


class OAuthForbidden(OAuthError):
    """``OAuthForbiddenException`` and the scope interceptor's insufficient_scope: 403."""

    status = 403


class FilterRejection(Exception):
    """An answer from one of Synapse's servlet filters (see the module docstring).

    It wraps the error it reports; ``status`` may differ from the wrapped error's (the
    authentication filter answers every bad bearer token with 401).
    """

    def __init__(self, error: SynapseError, status: int | None = None) -> None:
        super().__init__(error.reason)
        self.error = error
        self.status = status if status is not None else error.status

    def headers(self) -> dict[str, str]:
        """Headers ``HttpAuthUtil.reject`` sets."""
        headers = {"Content-Type": "application/json"}
        if self.status == 401:
            headers["WWW-Authenticate"] = WWW_AUTHENTICATE
        return headers

    def payload(self) -> bytes:
        """The body, written with ``println`` (trailing newline)."""
        return dumps(self.error.body()) + b"\n"
