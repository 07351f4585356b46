"""Checking the SigV4 signature of a data-channel upgrade, as the service does.

The official plugin signs the websocket upgrade of the ``StreamUrl`` (service ``ssmmessages``,
the session's region, header signature; ``websocketchannel.go``); AWS's example policies
grant ``ssmmessages:OpenDataChannel`` for it, and an upgrade without a valid signature is
refused with HTTP 403. What is checked here is what the *Signature Version 4* pages of the IAM
User Guide ("Elements of an AWS API request signature", "Create a signed AWS API request",
"Troubleshoot signing errors") say every AWS endpoint checks:

- ``Authorization: AWS4-HMAC-SHA256 Credential=<key>/<yyyymmdd>/<region>/<service>/aws4_request,
  SignedHeaders=<...>, Signature=<hex>``; ``host`` and ``x-amz-date`` are among the signed
  headers; the scope's date is the day of ``X-Amz-Date``; region and service are the
  endpoint's (otherwise ``SignatureDoesNotMatch`` with the scope in the message);
- ``X-Amz-Date`` is within 5 minutes of the service's clock ("Signature expired");
- the access key is known (``InvalidClientTokenId`` / "The security token included in the
  request is invalid"), temporary keys come with their own session token and have not
  expired (``ExpiredToken``);
- the signature recomputed over the signed headers with the key's secret matches.

The signature is recomputed with botocore's `SigV4Auth`, never by hand. Which principals
exist is a `CredentialStore`: moto's IAM and STS in the composed local cloud
(`localcloud.aws.principals`), a fixed set of keys for the stand-in on its own.
"""

from __future__ import annotations

import calendar
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from botocore.auth import SigV4Auth
from botocore.credentials import ReadOnlyCredentials

from spawner.ssm.signing import signing_request

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "ssmmessages"
#: How far X-Amz-Date may be from the service's clock.
MAX_SKEW = 5 * 60

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)


@dataclass(frozen=True)
class Principal:
    """Who holds an access key, and what they sign with."""

    access_key_id: str
    secret_access_key: str
    arn: str
    #: the session token temporary credentials must present (None for long-term keys)
    session_token: str | None = None
    #: when temporary credentials stop working (Unix time), None for long-term keys
    expires: float | None = None


class CredentialStore(Protocol):
    """The principals the service knows, by access key id."""

    def lookup(self, access_key_id: str) -> Principal | None: ...


class StaticCredentials:
    """A fixed set of long-term keys (``{access key id: secret}``), for the stand-in alone."""

    def __init__(self, keys: Mapping[str, str], account: str = "123456789012") -> None:
        self._principals = {
            key: Principal(key, secret, f"arn:aws:iam::{account}:user/{key}")
            for key, secret in keys.items()
        }

    def lookup(self, access_key_id: str) -> Principal | None:
        return self._principals.get(access_key_id)


class SignatureError(Exception):
    """An upgrade the service refuses (HTTP 403); ``code`` is the AWS error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def verify(
    method: str,
    url: str,
    headers: Mapping[str, str],
    *,
    store: CredentialStore,
    region: str,
    service: str = SERVICE,
    now: float | None = None,
) -> Principal:
    """The principal that signed this request, or `SignatureError` saying why not.

    ``headers`` are the request's headers as received (any case); ``url`` its full URL (only
    host, path and query count).
    """
    lower = {name.lower(): value for name, value in headers.items()}
    authorization = lower.get("authorization")
    if not authorization:
        raise SignatureError(
            "MissingAuthenticationToken",
            "Request is missing Authentication Token: the data channel upgrade must be signed "
            "with Signature Version 4",
        )
    match = _AUTHORIZATION.match(authorization.strip())
    if match is None:
        raise SignatureError(
            "IncompleteSignature",
            f"Authorization header requires {ALGORITHM} with Credential, SignedHeaders and "
            "Signature",
        )
    parts = match["credential"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise SignatureError(
            "IncompleteSignature", f"Credential should be scoped correctly: {match['credential']}"
        )
    key_id, day, scope_region, scope_service, _ = parts
    signed = match["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        raise SignatureError(
            "SignatureDoesNotMatch", "host and x-amz-date must be among the signed headers"
        )
    missing = [name for name in signed if name not in lower]
    if missing:
        raise SignatureError(
            "SignatureDoesNotMatch", f"signed headers are missing: {', '.join(missing)}"
        )
    amz_date = lower["x-amz-date"]
    try:
        when = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError as exc:
        raise SignatureError(
            "IncompleteSignature", f"X-Amz-Date {amz_date!r} is not valid"
        ) from exc
    if day != amz_date[:8] or scope_region != region or scope_service != service:
        raise SignatureError(
            "SignatureDoesNotMatch",
            f"Credential should be scoped to a valid region and service: expected "
            f"{amz_date[:8]}/{region}/{service}/aws4_request, got "
            f"{day}/{scope_region}/{scope_service}/aws4_request",
        )
    now = time.time() if now is None else now
    if abs(now - when) > MAX_SKEW:
        raise SignatureError(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is not within 5 minutes of the service's time",
        )
    principal = store.lookup(key_id)
    if principal is None:
        raise SignatureError(
            "InvalidClientTokenId", "The security token included in the request is invalid."
        )
    token = lower.get("x-amz-security-token")
    if principal.session_token is not None:
        if token is None or not hmac.compare_digest(token, principal.session_token):
            raise SignatureError(
                "InvalidClientTokenId", "The security token included in the request is invalid."
            )
        if principal.expires is not None and now >= principal.expires:
            raise SignatureError(
                "ExpiredTokenException", "The security token included in the request is expired"
            )
    elif token is not None:
        raise SignatureError(
            "InvalidClientTokenId", "The security token included in the request is invalid."
        )
    request = signing_request(url, method)
    for name in signed:
        request.headers[name] = lower[name]
    request.context["timestamp"] = amz_date
    auth = SigV4Auth(
        ReadOnlyCredentials(principal.access_key_id, principal.secret_access_key, token),
        service,
        region,
    )
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, match["signature"]):
        raise SignatureError(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )
    return principal
