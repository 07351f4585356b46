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

from localcloud.aws.calls import CallRecord
from localcloud.instances.light import LightResponder
from localcloud.instances.simulator import InstanceSimulator


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


def test_indexed_moto_instances_answer_as_before(monkeypatch):
    """Light mode's other moto speed-up (``moto_server.index_moto_instances``): looking an
    instance up by id, and DescribeInstances with ``instance-id`` and tag filters (exact and
    with wildcards, alone and together), answer exactly as moto did."""
    import boto3
    from moto import mock_aws
    from moto.ec2.models.instances import InstanceBackend

    from localcloud.aws.moto_server import index_moto_instances

    for name in ("get_instance", "all_reservations"):
        monkeypatch.setattr(InstanceBackend, name, getattr(InstanceBackend, name))
    monkeypatch.setattr(InstanceBackend, "_snh_indexed", False, raising=False)
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        ids = []
        for user in ("ann", "bob", "bobby", "cy"):
            answer = ec2.run_instances(
                ImageId=ami,
                MinCount=2 if user == "cy" else 1,
                MaxCount=2 if user == "cy" else 1,
                TagSpecifications=[
                    {
                        "ResourceType": "instance",
                        "Tags": [{"Key": "hub", "Value": "h"}, {"Key": "u", "Value": user}],
                    }
                ],
            )
            ids += [i["InstanceId"] for i in answer["Instances"]]
        ec2.stop_instances(InstanceIds=[ids[1]])
        asks = [
            [{"Name": "instance-id", "Values": [ids[0], ids[4], "i-0000000000000000f"]}],
            [{"Name": "tag:u", "Values": ["bob"]}],
            [{"Name": "tag:u", "Values": ["bob*"]}],
            [{"Name": "tag:hub", "Values": ["h"]}, {"Name": "tag:u", "Values": ["cy", "ann"]}],
            [{"Name": "tag:hub", "Values": ["h"]}, {"Name": "instance-id", "Values": ids[3:]}],
            [
                {"Name": "tag:u", "Values": ["cy"]},
                {"Name": "instance-state-name", "Values": ["running"]},
            ],
            [{"Name": "instance-state-name", "Values": ["stopped"]}],
        ]

        def look() -> list[Any]:
            answers = [ec2.describe_instances(Filters=f)["Reservations"] for f in asks]
            attribute = ec2.describe_instance_attribute(InstanceId=ids[2], Attribute="userData")
            answers.append({k: v for k, v in attribute.items() if k != "ResponseMetadata"})
            answers.append(ec2.describe_instances(InstanceIds=ids[:2])["Reservations"])
            return answers

        before = look()
        index_moto_instances()
        assert look() == before
        assert [len(a) for a in before[:3]] == [2, 1, 2]
        try:
            ec2.describe_instance_attribute(InstanceId="i-0000000000000000f", Attribute="userData")
        except Exception as exc:  # still EC2's error for an unknown id
            assert "InvalidInstanceID.NotFound" in str(exc)
        else:
            raise AssertionError("an unknown instance id was answered")


async def test_the_watch_looks_at_what_a_call_changed_not_at_every_instance(tmp_path):
    """With thousands of instances, a look at every one is seconds of moto's time: after the
    hub's RunInstances, StopInstances, ... the simulator looks at the instances the call named
    (a RunInstances answer's ids); a poke without ids still looks at every instance."""

    class Reader:
        def __init__(self) -> None:
            self.asked: list[list[str] | None] = []

        def describe_instances(self, instance_ids=()):
            self.asked.append(sorted(instance_ids) or None)
            return []

    simulator = InstanceSimulator(
        moto_url="http://127.0.0.1:9", ssm=None, state_dir=tmp_path, poll_interval=3600
    )
    simulator._reader = reader = Reader()
    watch = asyncio.create_task(simulator._poll_loop())

    async def next_look(count: int) -> list[str] | None:
        for _ in range(3000):  # 30 s
            if len(reader.asked) >= count:
                return reader.asked[count - 1]
            await asyncio.sleep(0.01)
        raise TimeoutError(f"no look {count}")

    try:
        answer = b"<instancesSet><item><instanceId>i-0123456789abcdef0</instanceId>"
        launched = CallRecord(1, "ec2", "RunInstances", {}, 1, "a", status=200, answer=answer)
        simulator.on_aws_call(launched)
        assert await next_look(1) == ["i-0123456789abcdef0"]
        stop = {"InstanceId.1": "i-0123456789abcdef0", "InstanceId.2": "i-0fedcba9876543210"}
        simulator.on_aws_call(CallRecord(2, "ec2", "StopInstances", stop, 1, "b", status=200))
        assert await next_look(2) == ["i-0123456789abcdef0", "i-0fedcba9876543210"]
        simulator.poke()
        assert await next_look(3) is None
    finally:
        simulator._closed = True
        watch.cancel()
