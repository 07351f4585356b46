"""The real-boot machines' instance metadata service (``localcloud.machines.imds``), driven
by botocore's own IMDS client (what the AWS CLI in the bootstrap and every SDK in the notebook
container use) and by raw requests for the rules the EC2 User Guide states for IMDSv2 with
``HttpTokens=required``: a token from ``PUT /latest/api/token`` with a TTL of 1-21600 s (400
otherwise), no token PUT through a proxy (``X-Forwarded-For``: 403), no GET without a valid
token (401), unknown paths 404; the hop limit of the token's answer, and IMDSv1 GETs when
tokens are optional.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import json
from collections.abc import AsyncIterator

import botocore.utils
import pytest_asyncio
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from localcloud.machines.imds import (
    InstanceIdentity,
    MetadataService,
    RoleSession,
    metadata_app,
)

IDENTITY = InstanceIdentity(
    instance_id="i-0123456789abcdef0",
    region="us-east-1",
    availability_zone="us-east-1b",
    instance_type="t3.large",
    image_id="ami-0123456789abcdef0",
    account_id="123456789012",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Sts:
    """AssumeRole as the provider: new credentials, valid for an hour, each time asked."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls = 0

    async def __call__(self) -> RoleSession:
        self.calls += 1
        expires = dt.datetime.fromtimestamp(self.clock.now + 3600, dt.UTC)
        return RoleSession(f"ASIA{self.calls:016d}", "secret", f"token-{self.calls}", expires)


@pytest_asyncio.fixture
async def imds() -> AsyncIterator[tuple[str, MetadataService, Clock, Sts]]:
    clock = Clock()
    sts = Sts(clock)
    service = MetadataService(
        IDENTITY,
        role_name="notebook-role",
        credentials=sts,
        user_data=b"#cloud-config\n",
        clock=clock,
    )
    [sock] = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(metadata_app(service))
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/", service, clock, sts
    server.stop()


async def fetch(url: str, method: str = "GET", **headers: str) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(
        url,
        method=method,
        headers=headers,
        body=b"" if method in ("PUT", "POST") else None,
        raise_error=False,
        allow_nonstandard_methods=True,
    )


async def token(base: str, ttl: str = "60") -> str:
    answer = await fetch(
        f"{base}latest/api/token", "PUT", **{"X-aws-ec2-metadata-token-ttl-seconds": ttl}
    )
    assert answer.code == 200
    return answer.body.decode()


async def test_botocore_reads_the_roles_credentials_and_the_region(imds) -> None:
    base, _, _, sts = imds
    fetcher = botocore.utils.InstanceMetadataFetcher(base_url=base, timeout=5, num_attempts=2)
    creds = await asyncio.to_thread(fetcher.retrieve_iam_role_credentials)
    assert creds["role_name"] == "notebook-role"
    assert (creds["access_key"], creds["token"]) == ("ASIA0000000000000001", "token-1")
    assert creds["expiry_time"].endswith("Z")
    region = botocore.utils.InstanceMetadataRegionFetcher(base_url=base, timeout=5)
    assert await asyncio.to_thread(region.retrieve_region) == "us-east-1"
    assert sts.calls == 1


async def test_tokens_are_required_and_their_rules_kept(imds) -> None:
    base, _, clock, _ = imds
    ttl = "X-aws-ec2-metadata-token-ttl-seconds"
    assert (await fetch(f"{base}latest/api/token", "PUT")).code == 400
    for bad in ("0", "21601", "soon"):
        assert (await fetch(f"{base}latest/api/token", "PUT", **{ttl: bad})).code == 400
    forwarded = {ttl: "60", "X-Forwarded-For": "10.0.0.5"}
    assert (await fetch(f"{base}latest/api/token", "PUT", **forwarded)).code == 403
    url = f"{base}latest/meta-data/instance-id"
    assert (await fetch(url)).code == 401
    assert (await fetch(url, **{"X-aws-ec2-metadata-token": "made-up"})).code == 401
    good = await token(base, "60")
    answer = await fetch(url, **{"X-aws-ec2-metadata-token": good})
    assert (answer.code, answer.body) == (200, b"i-0123456789abcdef0")
    assert answer.headers["Content-Type"] == "text/plain" and answer.headers["Server"] == "EC2ws"
    clock.now += 61
    assert (await fetch(url, **{"X-aws-ec2-metadata-token": good})).code == 401  # expired
    fresh = {"X-aws-ec2-metadata-token": await token(base)}
    assert (await fetch(f"{base}latest/meta-data/no-such-thing", **fresh)).code == 404
    assert (await fetch(url, "POST", **fresh)).code == 405


async def test_listings_documents_and_user_data(imds) -> None:
    base, service, _, _ = imds
    auth = {"X-aws-ec2-metadata-token": await token(base)}
    listing = (await fetch(f"{base}latest/meta-data/", **auth)).body.decode().split("\n")
    assert "iam/" in listing and "placement/" in listing and "instance-id" in listing
    zone = await fetch(f"{base}latest/meta-data/placement/availability-zone", **auth)
    assert zone.body == b"us-east-1b"
    document = json.loads(
        (await fetch(f"{base}latest/dynamic/instance-identity/document", **auth)).body
    )
    assert (document["instanceId"], document["region"], document["accountId"]) == (
        "i-0123456789abcdef0",
        "us-east-1",
        "123456789012",
    )
    assert (await fetch(f"{base}latest/user-data", **auth)).body == b"#cloud-config\n"
    service.user_data = gzip.compress(b"#cloud-config\n")  # bytes as they are, not decoded
    assert (await fetch(f"{base}latest/user-data", **auth)).body == service.user_data
    assert (await fetch(base)).code == 401  # the versions too need a token
    versions = (await fetch(base, **auth)).body.decode().split("\n")
    assert "latest" in versions and "2009-04-04" in versions
    dated = await fetch(f"{base}2009-04-04/meta-data/instance-id", **auth)  # cloud-init's
    assert dated.body == b"i-0123456789abcdef0"
    service.user_data = b""
    assert (await fetch(f"{base}latest/user-data", **auth)).code == 404


async def test_credentials_are_renewed_before_they_expire(imds) -> None:
    base, _, clock, sts = imds
    url = f"{base}latest/meta-data/iam/security-credentials/notebook-role"
    auth = {"X-aws-ec2-metadata-token": await token(base, "21600")}
    first = json.loads((await fetch(url, **auth)).body)
    assert json.loads((await fetch(url, **auth)).body) == first and sts.calls == 1
    clock.now += 3600 - 10 * 60  # ten minutes before they expire
    second = json.loads((await fetch(url, **auth)).body)
    assert second["AccessKeyId"] != first["AccessKeyId"] and sts.calls == 2
    assert (
        await fetch(f"{base}latest/meta-data/iam/security-credentials/other", **auth)
    ).code == 404


async def test_no_instance_profile_no_credentials() -> None:
    service = MetadataService(IDENTITY, role_name=None, credentials=None)
    assert (await service.get("meta-data/iam/security-credentials/")) == (404, "Not Found")
    assert "iam/" not in (await service.get("meta-data"))[1]


@contextlib.asynccontextmanager
async def served(service: MetadataService, hops: int) -> AsyncIterator[str]:
    [sock] = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(metadata_app(service, hops))
    server.add_sockets([sock])
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.stop()
        service.close()


async def test_a_token_answer_travels_no_further_than_the_hop_limit() -> None:
    """EC2 User Guide, "Configure the instance metadata options": the token's answer has an
    IP TTL of ``HttpPutResponseHopLimit``; a container on the instance's bridge is a hop
    further than the instance, so with a limit of 1 its PUT is never answered (the SDK times
    out and finds no credentials), with 2 it is. The instance itself gets its token either
    way."""
    clock = Clock()
    ttl = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    for limit in (1, 2):
        service = MetadataService(
            IDENTITY, role_name="notebook-role", credentials=Sts(clock), hop_limit=limit
        )
        async with served(service, 1) as instance, served(service, 2) as container:
            assert len(await token(instance)) > 20
            try:
                answer = await AsyncHTTPClient().fetch(
                    f"{container}latest/api/token",
                    method="PUT",
                    headers=ttl,
                    body=b"",
                    request_timeout=5,
                )
            except HTTPClientError as exc:
                assert limit == 1 and exc.code == 599, exc  # a timeout: nothing came back
            else:
                assert limit == 2 and answer.code == 200
            fetcher = botocore.utils.InstanceMetadataFetcher(base_url=container, timeout=5)
            creds = await asyncio.to_thread(fetcher.retrieve_iam_role_credentials)
            assert bool(creds) == (limit == 2)


async def test_tokens_optional_answer_a_get_without_one_but_not_with_a_bad_one() -> None:
    """``HttpTokens=optional`` (EC2's default for a launch without metadata options): IMDSv1
    GETs are answered; a GET with an invalid token is still refused (401)."""
    service = MetadataService(IDENTITY, role_name=None, credentials=None, tokens_required=False)
    async with served(service, 1) as base:
        url = f"{base}latest/meta-data/instance-id"
        answer = await fetch(url)
        assert (answer.code, answer.body) == (200, b"i-0123456789abcdef0")
        assert (await fetch(url, **{"X-aws-ec2-metadata-token": "made-up"})).code == 401
        good = {"X-aws-ec2-metadata-token": await token(base)}
        assert (await fetch(url, **good)).code == 200
