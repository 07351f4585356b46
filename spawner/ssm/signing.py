"""SigV4 for the data channel's websocket upgrade, as the official plugin signs it.

Since the 1.2.688 line (for good by 1.2.764.0, the release AWS now asks for) the plugin signs
the upgrade ``GET`` of the ``StreamUrl`` (``src/communicator/websocketchannel.go``, ``Open`` and
``getV4SignatureHeader``): aws-sdk-go's v4 signer, service name ``ssmmessages``, the session's
region, the caller's own credentials, nil body, the time of the dial. Its headers are
``Authorization``, ``X-Amz-Date`` and, for temporary credentials, ``X-Amz-Security-Token``;
the signed headers are ``host;x-amz-date`` (plus ``x-amz-security-token``), the payload hash is
that of the empty body, and no ``X-Amz-Content-Sha256`` header is added (the Go signer adds it
for S3 and Glacier only). A URL that is already presigned (any ``X-Amz-*`` authentication
parameter in its query) is dialled as it is (``isPresignedURL``).

botocore's `SigV4Auth` computes the same signature for the same inputs; this module only
chooses the inputs. Credentials are read at each signing through botocore's credential
objects, so instance-role credentials that rotated since the session began (a resume an hour
later) sign with their current value (aws/session-manager-plugin issue #136: resuming with
expired credentials fails with 403).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit, urlunsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

#: The signing name of the data channel's endpoint (plugin ``config.ServiceName``).
SERVICE_NAME = "ssmmessages"

#: Query parameters whose presence makes a URL presigned (``isPresignedURL``).
PRESIGNED_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
)

#: Returns the credentials to sign with now, or None (then the upgrade goes unsigned, as the
#: plugin dials when it has no signer). May block (a refresh can call STS or IMDS).
CredentialSource = Callable[[], "ReadOnlyCredentials | None"]


def is_presigned(url: str) -> bool:
    """Whether the URL carries its own signature in the query (then no header is added)."""
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    return any(name in query for name in PRESIGNED_PARAMS)


def signing_request(url: str, method: str = "GET") -> AWSRequest:
    """The request as SigV4 canonicalises it: the query decoded into parameters, so that
    botocore URI-encodes each name and value (a raw query would be signed as it stands; the
    Go signer, like AWS, decodes and re-encodes it: ``=``, ``+`` or ``/`` in a value differ)."""
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    params = parse_qsl(parts.query, keep_blank_values=True)
    return AWSRequest(method=method, url=base, params=params)


def upgrade_headers(url: str, credentials: ReadOnlyCredentials, region: str) -> dict[str, str]:
    """The headers that sign the websocket upgrade ``GET url`` with SigV4 (now)."""
    request = signing_request(url)
    SigV4Auth(credentials, SERVICE_NAME, region).add_auth(request)
    return {
        name: request.headers[name]
        for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token")
        if name in request.headers
    }


def client_credentials(client: Any) -> CredentialSource:
    """The credentials a boto3 client signs its own calls with, read anew at every use.

    botocore keeps them on the client's request signer: the same (refreshable) object that
    signs StartSession and ResumeSession, so the data channel and the API calls always use one
    identity and one refresh. Clients without one (test doubles) give None.
    """
    signer = getattr(client, "_request_signer", None)
    credentials = getattr(signer, "_credentials", None)

    def current() -> ReadOnlyCredentials | None:
        if credentials is None:
            return None
        frozen = credentials.get_frozen_credentials()
        return frozen if frozen.access_key else None

    return current


def client_region(client: Any) -> str | None:
    """The region a boto3 client is configured for (the session's region)."""
    meta = getattr(client, "meta", None)
    return getattr(meta, "region_name", None)
