"""Golden tests of the signed data-channel upgrade (``spawner.ssm.signing``).

What the plugin sends (websocketchannel.go ``getV4SignatureHeader``: aws-sdk-go's v4 signer,
``http.NewRequest("GET", streamUrl, nil)``, service ``ssmmessages``, the session's region) is
written out here from the Signature Version 4 specification (IAM User Guide, "Create a signed
AWS API request"): the canonical request as text, then the signature, which is checked against
botocore's own signer run in the test on the same inputs, and against the value it has today.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac

import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials, RefreshableCredentials

from spawner.ssm.signing import client_credentials, is_presigned, upgrade_headers

URL = (
    "wss://ssmmessages.us-east-1.amazonaws.com/v1/data-channel/"
    "AROAEXAMPLE-0a1b2c3d4e5f67890?role=publish_subscribe"
)
KEY, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"  # the AWS docs' example
WHEN = datetime.datetime(2026, 12, 6, 12, 36, 0)
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

#: The canonical request, line by line as the specification defines it: method, URI, query,
#: canonical headers (lower-case, sorted, one per line, then an empty line), signed headers,
#: and the hash of the (empty) payload. No X-Amz-Content-Sha256: the Go signer adds that
#: header for S3 and Glacier only.
CANONICAL = "\n".join(
    [
        "GET",
        "/v1/data-channel/AROAEXAMPLE-0a1b2c3d4e5f67890",
        "role=publish_subscribe",
        "host:ssmmessages.us-east-1.amazonaws.com",
        "x-amz-date:20261206T123600Z",
        "",
        "host;x-amz-date",
        EMPTY_SHA256,
    ]
)


@pytest.fixture
def fixed_clock(monkeypatch):
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: WHEN)


def _spec_signature(canonical: str, secret: str, date: str, region: str) -> str:
    """The signature from the canonical request, step by step as the specification says."""
    scope = f"{date[:8]}/{region}/ssmmessages/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret}".encode()
    for part in (date[:8], region, "ssmmessages", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_signed_upgrade_matches_the_specification_and_botocore(fixed_clock) -> None:
    headers = upgrade_headers(URL, ReadOnlyCredentials(KEY, SECRET, None), "us-east-1")

    auth = SigV4Auth(ReadOnlyCredentials(KEY, SECRET, None), "ssmmessages", "us-east-1")
    unsigned = AWSRequest(method="GET", url=URL, headers={"X-Amz-Date": "20261206T123600Z"})
    unsigned.context["timestamp"] = "20261206T123600Z"
    assert auth.canonical_request(unsigned) == CANONICAL
    reference = AWSRequest(method="GET", url=URL)
    auth.add_auth(reference)
    signature = _spec_signature(CANONICAL, SECRET, "20261206T123600Z", "us-east-1")
    expected = (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261206/us-east-1/ssmmessages/aws4_request, "
        f"SignedHeaders=host;x-amz-date, Signature={signature}"
    )
    assert reference.headers["Authorization"] == expected  # botocore agrees with the spec
    assert headers == {"Authorization": expected, "X-Amz-Date": "20261206T123600Z"}
    assert signature == "16df98589c11ab2a865a3b310d8682c2b72c69507b762d525bc9b09abc5e9dc3"


def test_temporary_credentials_sign_their_session_token(fixed_clock) -> None:
    """Instance-role (temporary) credentials: X-Amz-Security-Token is sent and signed, as
    aws-sdk-go's signer does for a session token."""
    creds = ReadOnlyCredentials("ASIAEXAMPLE", SECRET, "the-session-token")
    headers = upgrade_headers(URL, creds, "eu-west-1")
    canonical = "\n".join(
        [
            "GET",
            "/v1/data-channel/AROAEXAMPLE-0a1b2c3d4e5f67890",
            "role=publish_subscribe",
            "host:ssmmessages.us-east-1.amazonaws.com",
            "x-amz-date:20261206T123600Z",
            "x-amz-security-token:the-session-token",
            "",
            "host;x-amz-date;x-amz-security-token",
            EMPTY_SHA256,
        ]
    )
    signature = _spec_signature(canonical, SECRET, "20261206T123600Z", "eu-west-1")
    assert headers["X-Amz-Security-Token"] == "the-session-token"
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20261206/eu-west-1/ssmmessages/aws4_request, "
        f"SignedHeaders=host;x-amz-date;x-amz-security-token, Signature={signature}"
    )


def test_presigned_urls_are_recognised_as_the_plugin_does() -> None:
    """isPresignedURL: any of the SigV4 query parameters makes a URL presigned."""
    assert not is_presigned(URL)
    for name in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Security-Token"):
        assert is_presigned(f"{URL}&{name}=x")


def test_credentials_are_read_anew_at_every_signing() -> None:
    """A refreshable credential (an instance role's) that rotated since the session started
    signs the next upgrade with its new value (aws/session-manager-plugin issue #136)."""
    issued = iter(f"ASIAKEY{n}" for n in range(1, 10))

    def refresh() -> dict[str, str]:
        return {
            "access_key": next(issued),
            "secret_key": SECRET,
            "token": "token",
            # inside botocore's mandatory refresh window: every read refreshes
            "expiry_time": (
                datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=60)
            ).isoformat(),
        }

    refreshable = RefreshableCredentials.create_from_metadata(refresh(), refresh, "test")

    class Signer:
        _credentials = refreshable

    class Client:
        _request_signer = Signer()

    current = client_credentials(Client())
    assert [current().access_key for _ in range(2)] == ["ASIAKEY2", "ASIAKEY3"]
    assert client_credentials(object())() is None  # a test double without credentials


def test_query_values_are_uri_encoded_as_aws_canonicalises_them(fixed_clock) -> None:
    """Canonical query string (SigV4 specification; aws-sdk-go's signer decodes the query and
    encodes it again): names and values URI-encoded (only A-Z a-z 0-9 - _ . ~ stay), sorted
    by name. A value holding base64's ``+``, ``/`` or ``=`` is not signed as it stands."""
    url = URL + "&cell-number=AAE%2B%2Fx%3D%3D"
    headers = upgrade_headers(url, ReadOnlyCredentials(KEY, SECRET, None), "us-east-1")
    canonical = CANONICAL.replace(
        "role=publish_subscribe", "cell-number=AAE%2B%2Fx%3D%3D&role=publish_subscribe"
    )
    signature = _spec_signature(canonical, SECRET, "20261206T123600Z", "us-east-1")
    assert headers["Authorization"].endswith(f"Signature={signature}")
