"""The light instances' shared responder (``localcloud.instances.light``) on its own.

It must answer as JupyterHub expects a single-user server to (``User._wait_up``: a GET of
``<prefix>api`` below 500 with ``X-JupyterHub-Version``; Jupyter Server's ``/api/status``
carries ``last_activity``), over HTTP/1.1 keep-alive as the proxy and the tunnel use it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jupyterhub

from localcloud.instances.light import LightResponder


async def exchange(writer, reader, path: str) -> tuple[str, dict[str, str], bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status, *lines = head.strip().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def test_answers_the_hubs_probes_and_reports_activity_per_user():
    responder = LightResponder()
    port, again = await asyncio.gather(responder.start(), responder.start())
    assert port == again  # started once, however many instances boot at the same time
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        status, headers, body = await exchange(writer, reader, "/user/ann/api")
        assert status == "HTTP/1.1 200 OK"
        assert headers["x-jupyterhub-version"] == jupyterhub.__version__
        assert "version" in json.loads(body)
        # Same connection (keep-alive): the probes are not activity; a page is.
        _, _, body = await exchange(writer, reader, "/user/ann/api/status")
        assert json.loads(body)["last_activity"]
        assert responder.last_activity("/user/ann/") == responder.started
        await exchange(writer, reader, "/user/ann/lab/tree?x=1")
        assert responder.last_activity("/user/ann/") > responder.started
        assert responder.last_activity("/user/bob/") == responder.started
        writer.close()
    finally:
        await responder.close()


def test_indexed_moto_tags_answer_describe_instances_as_before(monkeypatch):
    """Light mode's moto speed-up (``moto_server.index_moto_tags``) must not change an answer:
    DescribeInstances with a tag filter lists the same instances, tags and volumes."""
    import boto3
    from moto import mock_aws
    from moto.ec2.models.core import TaggedEC2Resource

    from localcloud.aws.moto_server import index_moto_tags

    monkeypatch.setattr(TaggedEC2Resource, "get_tags", TaggedEC2Resource.get_tags)  # restored
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        for user in ("ann", "bob", "cy"):
            ec2.run_instances(
                ImageId=ami,
                MinCount=1,
                MaxCount=1,
                BlockDeviceMappings=[{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 8}}],
                TagSpecifications=[
                    {
                        "ResourceType": kind,
                        "Tags": [{"Key": "hub", "Value": "h"}, {"Key": "u", "Value": user}],
                    }
                    for kind in ("instance", "volume")
                ],
            )

        def look() -> tuple[Any, Any]:
            found = ec2.describe_instances(Filters=[{"Name": "tag:u", "Values": ["bob", "cy"]}])
            return found["Reservations"], ec2.describe_volumes()["Volumes"]

        before = look()
        index_moto_tags()
        assert look() == before
        assert len(before[0]) == 2
