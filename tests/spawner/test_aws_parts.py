"""The spawner's AWS plumbing against moto in-process: calls off the event loop, typed errors,
the server's parameters, and the shared instance poller."""

from __future__ import annotations

import asyncio
import threading

import boto3
import botocore.exceptions
import pytest

from spawner.aws import Aws, AwsError, ErrorKind, classify
from spawner.naming import INSTANCE_ARN_TAG, ServerParameters
from spawner.parameters import ParameterStore
from spawner.poller import UNKNOWN, InstancePoller

REGION = "us-east-1"


@pytest.fixture
def aws(moto_aws):
    return Aws(REGION)


def client_error(code: str, status: int = 400) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "Op",
    )


@pytest.mark.parametrize(
    "code, status, kind",
    [
        ("InsufficientInstanceCapacity", 500, ErrorKind.CAPACITY),
        ("RequestLimitExceeded", 503, ErrorKind.THROTTLED),
        ("UnauthorizedOperation", 403, ErrorKind.PERMISSION),
        ("InvalidAMIID.NotFound", 400, ErrorKind.CONFIGURATION),
        ("InvalidInstanceID.NotFound", 400, ErrorKind.NOT_FOUND),
        ("InternalError", 500, ErrorKind.TRANSIENT),
        ("SomethingElse", 400, ErrorKind.OTHER),
    ],
)
def test_errors_are_classified_by_what_the_hub_can_do(code, status, kind):
    error = classify("RunInstances", client_error(code, status))
    assert (error.operation, error.code, error.kind) == ("RunInstances", code, kind)


async def test_boto3_runs_off_the_event_loop(aws):
    loop_thread = threading.get_ident()
    seen = []

    class Recorder:
        def describe_regions(self):
            seen.append(threading.get_ident())
            return {}

    aws._clients[("ec2", True)] = Recorder()
    await aws.call("ec2", "describe_regions")
    assert seen and seen[0] != loop_thread
    assert aws.calls[("ec2", "describe_regions")] == 1


async def test_failed_call_raises_aws_error_and_counts_it(aws):
    with pytest.raises(AwsError) as e:
        await aws.call("ec2", "describe_instances", InstanceIds=["i-0123456789abcdef0"])
    assert e.value.kind is ErrorKind.NOT_FOUND
    assert sum(aws.errors.values()) == 1


def test_parameter_paths_escape_what_ssm_does_not_allow():
    p = ServerParameters.for_server("/snh/", "hub-1", "alice", "")
    assert p.path == "/snh/hub-1/alice/_"
    assert p.synapse_token == "/snh/hub-1/alice/_/synapse-token"
    q = ServerParameters.for_server("/snh", "hub-1", "a@b", "my server")
    assert q.path == "/snh/hub-1/a_x40b/my_x20server"
    # no two names share a path
    assert ServerParameters.for_server("/p", "h", "a_x40b", "").path != (
        ServerParameters.for_server("/p", "h", "a@b", "").path
    )


async def test_parameters_written_secure_tagged_and_deleted(aws):
    store = ParameterStore(aws)
    params = ServerParameters.for_server("/snh", "hub", "alice", "")
    await store.write(
        params,
        config={"image": "x"},
        env={"JUPYTERHUB_API_TOKEN": "t"},
        synapse_token="secret-token",
    )
    ssm = boto3.client("ssm", region_name=REGION)
    kinds = {p["Name"]: p["Type"] for p in ssm.describe_parameters()["Parameters"]}
    assert kinds == {
        params.config: "String",
        params.env: "SecureString",
        params.synapse_token: "SecureString",
    }
    await store.tag_for_instance(params, "arn:aws:ec2:us-east-1:123456789012:instance/i-1")
    tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=params.env)
    assert tags["TagList"] == [
        {"Key": INSTANCE_ARN_TAG, "Value": "arn:aws:ec2:us-east-1:123456789012:instance/i-1"}
    ]
    await store.write_synapse_token(params, "rotated")
    value = ssm.get_parameter(Name=params.synapse_token, WithDecryption=True)["Parameter"]["Value"]
    assert value == "rotated"
    await store.delete(params)
    assert await store.exists(params) == []
    await store.delete(params)  # idempotent


def run_tagged(ec2, hub: str, user: str, n: int = 1) -> list[str]:
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    answer = ec2.run_instances(
        ImageId=image,
        MinCount=n,
        MaxCount=n,
        InstanceType="t3.large",
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [
                    {"Key": "jupyterhub:hub", "Value": hub},
                    {"Key": "jupyterhub:user", "Value": user},
                ],
            }
        ],
    )
    return [i["InstanceId"] for i in answer["Instances"]]


async def test_poller_sees_only_its_hub_and_says_unknown_until_fresh(aws):
    ec2 = boto3.client("ec2", region_name=REGION)
    mine = run_tagged(ec2, "hub-a", "alice", 2)
    theirs = run_tagged(ec2, "hub-b", "bob")
    poller = InstancePoller(aws, "hub-a", interval=30)
    assert poller.get(mine[0]) is UNKNOWN
    await poller.refresh()
    assert set(poller.instances) == set(mine)
    assert poller.get(theirs[0]) is None
    assert poller.get(mine[0]).state == "running"
    assert [v.instance_id for v in poller.find(**{"jupyterhub:user": "alice"})] != []


async def test_one_describe_per_interval_for_everybody(aws):
    ec2 = boto3.client("ec2", region_name=REGION)
    ids = run_tagged(ec2, "hub-a", "alice", 3)
    poller = InstancePoller(aws, "hub-a", interval=30)
    poller.ensure_running()
    async with asyncio.timeout(10), poller._updated:
        await poller._updated.wait_for(lambda: poller.fresh)
    for _ in range(50):
        assert poller.get(ids[0]) is not UNKNOWN
    assert aws.calls[("ec2", "describe_instances")] == 1
    await poller.stop()


async def test_a_lookup_by_tags_is_one_small_call_and_joins_the_view(aws):
    """A start that knows no instance id yet looks its instance up by its tags: one call
    filtered by them (with 5,000 servers, not five pages of everybody's)."""
    ec2 = boto3.client("ec2", region_name=REGION)
    [alice] = run_tagged(ec2, "hub-a", "alice")
    run_tagged(ec2, "hub-a", "bob", 3)
    run_tagged(ec2, "hub-b", "alice")  # another hub's alice
    poller = InstancePoller(aws, "hub-a", interval=30)
    found = await poller.lookup(**{"jupyterhub:user": "alice"})
    assert [v.instance_id for v in found] == [alice]
    assert aws.calls[("ec2", "describe_instances")] == 1
    assert list(poller.instances) == [alice] and not poller.fresh


async def test_wait_for_follows_a_stop(aws):
    ec2 = boto3.client("ec2", region_name=REGION)
    [iid] = run_tagged(ec2, "hub-a", "alice")
    poller = InstancePoller(aws, "hub-a", interval=30, fast_interval=0.05)
    poller.ensure_running()
    ec2.stop_instances(InstanceIds=[iid])
    async with asyncio.timeout(5):
        view = await poller.wait_for(iid, {"stopped"})
    assert view.state == "stopped"
    await poller.stop()


async def test_poller_backs_off_and_recovers_from_throttling(aws):
    poller = InstancePoller(aws, "hub-a", interval=30, fast_interval=0.01)
    real = aws.paginate
    failures = iter([True, True, False])

    async def flaky(*args, **kwargs):
        if next(failures, False):
            raise AwsError(
                "DescribeInstances", "RequestLimitExceeded", "slow down", ErrorKind.THROTTLED
            )
        return await real(*args, **kwargs)

    aws.paginate = flaky
    poller.ensure_running()
    poller._waiters = 1  # as if a spawn were waiting: short intervals
    async with asyncio.timeout(5), poller._updated:
        await poller._updated.wait_for(lambda: poller.fresh)
    assert poller.last_error is None and poller.describes == 1
    await poller.stop()


async def test_dead_poller_is_restarted(aws):
    poller = InstancePoller(aws, "hub-a", interval=30)
    poller.ensure_running()
    poller._task.cancel()
    await asyncio.sleep(0)
    poller.ensure_running()
    assert not poller._task.done()
    await poller.stop()
