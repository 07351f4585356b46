"""The instance metadata service (IMDSv2) of one real-boot machine.

On EC2 an instance asks ``http://169.254.169.254`` who it is and for its role's credentials;
the bootstrap does (``imds_token``, ``imds_get``), and so does every AWS SDK in the instance,
the notebook container's included. This is that service for one instance, answering as the
EC2 User Guide documents it ("Use the Instance Metadata Service to access instance metadata",
"Instance metadata categories") with the instance's metadata options (``HttpTokens=required``
and ``HttpPutResponseHopLimit=2``, as the hub launches instances):

- ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` from 1 to 21600
  answers a session token; a missing or out-of-range TTL is 400; a PUT that carries
  ``X-Forwarded-For`` is refused (403: "IMDS rejects requests with an X-Forwarded-For header",
  so that a misconfigured proxy on the instance cannot hand out tokens);
- every ``GET`` needs a valid, unexpired token in ``X-aws-ec2-metadata-token``: 401 otherwise
  (with ``HttpTokens=optional`` a GET without a token is answered, IMDSv1; one with an invalid
  token is still 401);
- the token's answer travels at most ``HttpPutResponseHopLimit`` hops (its IP TTL): the
  instance itself is one hop away, a container on its bridge two, so with a limit of 1 a
  container's PUT gets no answer at all and its SDK times out ("Configure the instance
  metadata options": the hop limit of 2 that containers need);
- answers are ``text/plain``; a directory lists its entries one per line (subdirectories with
  a trailing ``/``); an unknown path is 404; other methods are 405;
- ``meta-data/iam/security-credentials/`` names the instance profile's role, and
  ``meta-data/iam/security-credentials/<role>`` is the JSON every SDK reads (``Code``,
  ``LastUpdated``, ``Type``, ``AccessKeyId``, ``SecretAccessKey``, ``Token``, ``Expiration``),
  from a provider (moto's STS in the local cloud) asked again before they expire;
- ``dynamic/instance-identity/document`` and ``user-data`` as on EC2 (404 without user data);
- every dated API version answers as ``latest`` (cloud-init's EC2 data source asks for
  ``/2009-04-04/meta-data/...``), and ``/`` lists them.

It listens on a Unix socket that the machine's runtime binds in (the machine has no network
but its loopback: ``localcloud.machines.machine``), and on loopback TCP for tests, which drive
it with botocore's own IMDS client. A Unix socket carries no TTL, so the machine's link says
how far the asker is: it serves the machine's own processes and its containers on two
sockets (``localcloud.machines.links``), and each answers with its hop count.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import tornado.web

MAX_TTL = 21600
#: What ``GET /`` lists (EC2 lists every version since 1.0; these are the ones SDKs and
#: cloud-init ask for); any such version, or ``latest``, answers the same.
API_VERSIONS = ("1.0", "2007-01-19", "2009-04-04", "2016-09-02", "2021-03-23", "latest")
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
#: Credentials are fetched again this long before they expire (SDKs refresh 5-15 min before).
REFRESH_MARGIN = 15 * 60
#: ``issue_token``'s status for a token whose answer dies on the way (past the hop limit)
LOST = 0
#: How long a lost answer's connection is held before it is closed, unanswered: longer than
#: any SDK waits for the token (botocore: 1 s; the bootstrap's curl: 5 s).
LOST_ANSWER_SECONDS = 10.0


@dataclass(frozen=True)
class InstanceIdentity:
    """What EC2 knows of the instance and says about it."""

    instance_id: str
    region: str
    availability_zone: str
    instance_type: str
    image_id: str
    account_id: str
    private_ip: str = "10.0.0.10"
    launched_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def document(self) -> dict[str, Any]:
        """``dynamic/instance-identity/document``."""
        return {
            "accountId": self.account_id,
            "architecture": "x86_64",
            "availabilityZone": self.availability_zone,
            "billingProducts": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "imageId": self.image_id,
            "instanceId": self.instance_id,
            "instanceType": self.instance_type,
            "kernelId": None,
            "pendingTime": _iso(self.launched_at),
            "privateIp": self.private_ip,
            "ramdiskId": None,
            "region": self.region,
            "version": "2017-09-30",
        }


@dataclass(frozen=True)
class RoleSession:
    """The role's temporary credentials as STS gave them."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: dt.datetime


CredentialProvider = Callable[[], Awaitable[RoleSession]]


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class MetadataService:
    """The answers of one instance's IMDS (no I/O but the credential provider's)."""

    def __init__(
        self,
        identity: InstanceIdentity,
        *,
        role_name: str | None,
        credentials: CredentialProvider | None,
        user_data: bytes = b"",
        clock: Callable[[], float] = time.time,
        hop_limit: int = 1,
        tokens_required: bool = True,
    ) -> None:
        self.identity = identity
        #: the instance's ``MetadataOptions`` (the hub launches with tokens required and a hop
        #: limit of 2; EC2's defaults, without options, are optional tokens and 1)
        self.hop_limit = hop_limit
        self.tokens_required = tokens_required
        #: connections whose token answer was lost, held until they are closed unanswered
        self._lost: dict[Any, asyncio.TimerHandle] = {}
        self.role_name = role_name
        self._credentials = credentials
        self.user_data = user_data
        self.clock = clock
        self._tokens: dict[str, float] = {}
        self._session: RoleSession | None = None
        self._session_at: dt.datetime | None = None

    # -- tokens -----------------------------------------------------------------------------
    def issue_token(
        self, ttl_header: str | None, forwarded: bool, hops: int = 1
    ) -> tuple[int, str]:
        """(status, body) of ``PUT /latest/api/token`` from ``hops`` hops away (``LOST``: the
        answer would not reach the asker)."""
        if hops > self.hop_limit:
            return LOST, ""
        if forwarded:
            return 403, "Forbidden"
        try:
            ttl = int(ttl_header or "")
        except ValueError:
            return 400, "Bad Request"
        if not 1 <= ttl <= MAX_TTL:
            return 400, "Bad Request"
        now = self.clock()
        self._tokens = {t: until for t, until in self._tokens.items() if until > now}
        token = secrets.token_urlsafe(42)
        self._tokens[token] = now + ttl
        return 200, token

    def hold_unanswered(self, stream: Any, seconds: float = LOST_ANSWER_SECONDS) -> None:
        """Keep a connection whose answer is lost open, unanswered, for ``seconds`` (its
        client gives up first), then close it."""

        def close() -> None:
            self._lost.pop(stream, None)
            stream.close()

        self._lost[stream] = asyncio.get_running_loop().call_later(seconds, close)

    def close(self) -> None:
        """Close the connections held unanswered (the service is going away)."""
        lost, self._lost = self._lost, {}
        for stream, timer in lost.items():
            timer.cancel()
            stream.close()

    def token_valid(self, token: str | None) -> bool:
        until = self._tokens.get(token or "")
        return until is not None and until > self.clock()

    def may_get(self, token: str | None) -> bool:
        """Whether a GET with ``token`` (None: no token header) is answered."""
        if token is None and not self.tokens_required:
            return True  # IMDSv1
        return self.token_valid(token)

    # -- answers -----------------------------------------------------------------------------
    async def get(self, path: str) -> tuple[int, str | bytes]:
        """(status, body) of a GET of ``/latest/<path>`` that ``may_get`` (the user data
        as the bytes it is: EC2 does not decode it, and it may be gzip or MIME)."""
        path = path.strip("/")
        if path == "":
            return 200, "dynamic\nmeta-data\nuser-data"
        if path == "user-data":
            return (200, self.user_data) if self.user_data else _404()
        if path == "dynamic":
            return 200, "instance-identity/"
        if path == "dynamic/instance-identity":
            return 200, "document"
        if path == "dynamic/instance-identity/document":
            return 200, json.dumps(self.identity.document(), indent=2)
        if path != "meta-data" and not path.startswith("meta-data/"):
            return _404()
        rest = path.removeprefix("meta-data").strip("/")
        if rest == "iam" or rest.startswith("iam/"):
            return await self._iam(rest.removeprefix("iam").strip("/"))
        node: Any = self._meta_data()
        for part in filter(None, rest.split("/")):
            if not isinstance(node, dict) or part not in node:
                return _404()
            node = node[part]
        if isinstance(node, dict):
            return 200, "\n".join(f"{k}/" if isinstance(v, dict) else k for k, v in node.items())
        return 200, str(node)

    def _meta_data(self) -> dict[str, Any]:
        i = self.identity
        hostname = f"ip-{i.private_ip.replace('.', '-')}.ec2.internal"
        tree: dict[str, Any] = {
            "ami-id": i.image_id,
            "hostname": hostname,
            "instance-id": i.instance_id,
            "instance-type": i.instance_type,
            "local-hostname": hostname,
            "local-ipv4": i.private_ip,
            "placement": {"availability-zone": i.availability_zone, "region": i.region},
        }
        if self.role_name:
            tree["iam"] = {"info": "", "security-credentials": {}}
        return tree

    async def _iam(self, rest: str) -> tuple[int, str]:
        if not self.role_name or self._credentials is None:
            return _404()
        if rest == "":
            return 200, "info\nsecurity-credentials/"
        if rest == "security-credentials":
            return 200, self.role_name
        if rest == "info":
            return 200, json.dumps(
                {
                    "Code": "Success",
                    "LastUpdated": _iso(dt.datetime.now(dt.UTC)),
                    "InstanceProfileArn": f"arn:aws:iam::{self.identity.account_id}:"
                    f"instance-profile/{self.role_name}",
                    "InstanceProfileId": "AIPA" + self.identity.instance_id[2:18].upper(),
                },
                indent=2,
            )
        if rest != f"security-credentials/{self.role_name}":
            return _404()
        session = await self._current_session()
        return 200, json.dumps(
            {
                "Code": "Success",
                "LastUpdated": _iso(self._session_at or dt.datetime.now(dt.UTC)),
                "Type": "AWS-HMAC",
                "AccessKeyId": session.access_key_id,
                "SecretAccessKey": session.secret_access_key,
                "Token": session.session_token,
                "Expiration": _iso(session.expiration),
            },
            indent=2,
        )

    async def _current_session(self) -> RoleSession:
        assert self._credentials is not None
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        if (
            self._session is None
            or (self._session.expiration - now).total_seconds() < REFRESH_MARGIN
        ):
            self._session = await self._credentials()
            self._session_at = now
        return self._session


def _404() -> tuple[int, str]:
    return 404, "Not Found"


class MetadataHandler(tornado.web.RequestHandler):
    """The HTTP face of one `MetadataService`."""

    def initialize(self, service: MetadataService, hops: int = 1) -> None:
        self.service = service
        self.hops = hops

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_header("Server", "EC2ws")
        self.set_header("Content-Type", "text/plain")

    def _answer(self, status: int, body: str | bytes) -> None:
        self.set_status(status)
        self.finish(body)

    def put(self, version: str, path: str) -> None:
        if version != "latest" or path != "api/token":
            return self._answer(405 if path else 404, "Method Not Allowed")
        forwarded = "X-Forwarded-For" in self.request.headers
        status, body = self.service.issue_token(
            self.request.headers.get(TTL_HEADER), forwarded, self.hops
        )
        if status == LOST:  # its packets die on the way: the asker hears nothing
            self.service.hold_unanswered(self.detach())
            return None
        if status == 200:
            self.set_header(TTL_HEADER, self.request.headers[TTL_HEADER])
        self._answer(status, body)

    async def get(self, version: str, path: str) -> None:
        if not self.service.may_get(self.request.headers.get(TOKEN_HEADER)):
            return self._answer(401, "Unauthorized")
        status, body = await self.service.get(path)
        self._answer(status, body)

    def post(self, version: str, path: str) -> None:
        self._answer(405, "Method Not Allowed")

    delete = patch = post


class VersionsHandler(MetadataHandler):
    """``GET /``: the API versions (a token needed unless tokens are optional)."""

    async def get(self) -> None:  # type: ignore[override]
        if not self.service.may_get(self.request.headers.get(TOKEN_HEADER)):
            return self._answer(401, "Unauthorized")
        self._answer(200, "\n".join(API_VERSIONS))


def metadata_app(service: MetadataService, hops: int = 1) -> tornado.web.Application:
    """The service's HTTP face for askers ``hops`` hops away (1: the instance itself)."""
    versions = r"(latest|1\.0|\d{4}-\d\d-\d\d)"
    args = {"service": service, "hops": hops}
    return tornado.web.Application(
        [
            (r"/", VersionsHandler, args),
            (rf"/{versions}/?(.*)", MetadataHandler, args),
        ],
        log_function=lambda handler: None,  # a machine's asking is not the local cloud's news
    )
