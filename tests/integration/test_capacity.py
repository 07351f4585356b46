"""When AWS has no capacity for a server's instance type (``InsufficientInstanceCapacity``
from the AWS front's fault rules, as EC2 answers ``RunInstances`` and ``StartInstances``):
the user is offered the community's types of the same architecture that are at least as
large, with their prices, in the refusal and in the spawn form; starting on one of them
works, and a stopped server resumes on it with its home volume and files."""

from __future__ import annotations

import pytest

from tests.integration.harness import own_hub, sign_in
from tests.integration.spawn_harness import (
    front_control,
    instances_of,
    spawn_error,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.integration

HUB_ID = "capacity-tests"
AD = {"community": "ad-portal", "image": "jupyter"}


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    with own_hub(cloud, tmp_path_factory.mktemp("hub-capacity"), HUB_ID) as hub:
        yield hub


def refuse(cloud, action: str, instance_type: str | None, count: int) -> None:
    params = {"InstanceType": instance_type} if instance_type else {}
    front_control(
        cloud,
        "POST",
        "/faults",
        {
            "service": "ec2",
            "action": action,
            "code": "InsufficientInstanceCapacity",
            "params": params,
            "count": count,
        },
    )


def contents(hub, path: str, **kwargs):
    return hub.api(kwargs.pop("method", "GET"), f"/../../user/alice/api/contents/{path}", **kwargs)


def test_no_capacity_anywhere_offers_equivalents_and_the_server_moves_to_one(hub, cloud):
    session, _ = sign_in(hub, "alice")
    # every subnet of ad-portal refuses t3.large
    refuse(cloud, "RunInstances", "t3.large", count=2)
    message = spawn_error(hub, "alice", {**AD, "instance_type": "t3.large"})
    assert "AWS has no t3.large capacity right now in" in message
    assert "t3.xlarge (4 vCPU, 16 GiB, ~$0.166/h)" in message
    assert "m5.large" not in message  # not one of the community's types
    form = session.get(f"{hub.url}/hub/spawn/alice", timeout=30).text
    assert "snh-capacity-note" in form and "t3.xlarge (4 vCPU" in form
    assert instances_of(cloud, "alice", hub_id=HUB_ID) == []  # nothing was launched

    # the user picks the first equivalent
    start_server(hub, "alice", {**AD, "instance_type": "t3.xlarge"})
    written = contents(
        hub,
        "kept.txt",
        method="PUT",
        json={"type": "file", "format": "text", "content": "before the move"},
    )
    assert written.status_code in (200, 201), written.text
    stop_server(hub, "alice")
    [instance] = instances_of(cloud, "alice", hub_id=HUB_ID)

    # the stopped instance's zone has no t3.xlarge capacity when it is started again
    refuse(cloud, "StartInstances", None, count=1)
    message = spawn_error(hub, "alice", {**AD, "instance_type": "t3.xlarge"})
    assert "AWS has no t3.xlarge capacity right now in us-east-1" in message
    assert "m5.xlarge" in message and "t3.large" not in message

    # it resumes as an m5.xlarge: the same instance, its volume, its files
    start_server(hub, "alice", {**AD, "instance_type": "m5.xlarge"})
    [again] = instances_of(cloud, "alice", hub_id=HUB_ID)
    assert again["InstanceId"] == instance["InstanceId"]
    assert again["InstanceType"] == "m5.xlarge"
    kept = contents(hub, "kept.txt")
    assert kept.status_code == 200 and kept.json()["content"] == "before the move"
    stop_server(hub, "alice")
    form = session.get(f"{hub.url}/hub/spawn/alice", timeout=30).text
    assert "snh-budget-note" not in form and "snh-capacity-note" not in form  # a start cleared it
