"""When AWS has no capacity for a server's instance type (``InsufficientInstanceCapacity``
from the AWS front's fault rules, as EC2 answers ``RunInstances`` and ``StartInstances``):
the user is offered the community's types of the same architecture that are at least as
large, with their prices, in the refusal and in the spawn form; starting on one of them
works, and a stopped server resumes on it with its home volume and files. When its zone has
no capacity at all, the server moves to another zone with its files, and a fault at each
step of the move loses nothing."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from spawner.naming import HOME_DEVICE
from spawner.zone_move import TAG_ZONE_MOVE
from tests.integration.harness import own_hub, sign_in
from tests.integration.spawn_harness import (
    front_control,
    instances_of,
    moto,
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

    # no zone has t3.xlarge capacity when it is started again: neither the stopped
    # instance's own (StartInstances) nor the other (RunInstances of a zone move)
    refuse(cloud, "StartInstances", None, count=1)
    refuse(cloud, "RunInstances", "t3.xlarge", count=1)
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


# --------------------------------------------------------------------------------------------
# Zone moves (spawner/zone_move.py): the stopped instance's zone has no capacity at all
# --------------------------------------------------------------------------------------------


def fault(cloud, action: str, code: str, count: int = 1) -> None:
    front_control(
        cloud, "POST", "/faults", {"service": "ec2", "action": action, "code": code, "count": count}
    )


def home_volume(instance: dict) -> str:
    [volume] = [
        m["Ebs"]["VolumeId"]
        for m in instance["BlockDeviceMappings"]
        if m["DeviceName"] == HOME_DEVICE
    ]
    return volume


def volume_exists(cloud, volume_id: str) -> bool:
    try:
        moto(cloud, "ec2").describe_volumes(VolumeIds=[volume_id])
    except ClientError as e:
        assert e.response["Error"]["Code"] == "InvalidVolume.NotFound"
        return False
    return True


def move_snapshots(cloud) -> list[dict]:
    return moto(cloud, "ec2").describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": [TAG_ZONE_MOVE]}]
    )["Snapshots"]


def stopped_instance(cloud) -> dict:
    [instance] = [
        i
        for i in instances_of(cloud, "alice", hub_id=HUB_ID)
        if i["State"]["Name"] not in ("terminated", "shutting-down")
    ]
    assert instance["State"]["Name"] == "stopped"
    return instance


def file_kept(hub) -> bool:
    kept = contents(hub, "kept.txt")
    return kept.status_code == 200 and kept.json()["content"] == "before the move"


def ensure_stopped_with_file(hub, cloud) -> dict:
    """alice's stopped server with kept.txt on its home volume (the first test left it so;
    this makes it so when run alone)."""
    if not instances_of(cloud, "alice", hub_id=HUB_ID):
        sign_in(hub, "alice")
        start_server(hub, "alice", AD)
        contents(
            hub,
            "kept.txt",
            method="PUT",
            json={"type": "file", "format": "text", "content": "before the move"},
        )
        stop_server(hub, "alice")
    return stopped_instance(cloud)


@pytest.mark.parametrize(
    ("action", "code", "says"),
    [
        ("CreateSnapshot", "UnauthorizedOperation", "CreateSnapshot of"),
        ("DescribeSnapshots", "UnauthorizedOperation", "DescribeSnapshots of"),
        ("RunInstances", "InsufficientInstanceCapacity", "AWS has no"),
    ],
)
def test_a_zone_move_that_fails_before_the_launch_leaves_the_server_where_it_was(
    hub, cloud, action, code, says
):
    """Steps 1 and 2 fail: the user is told (with the types offered), the server is still its
    old instance with its volume, and the move's snapshot is gone."""
    old = ensure_stopped_with_file(hub, cloud)
    refuse(cloud, "StartInstances", None, count=1)
    fault(cloud, action, code, count=5)
    message = spawn_error(hub, "alice", AD)
    cloud.clear_aws_faults()
    assert says in message, message
    assert stopped_instance(cloud)["InstanceId"] == old["InstanceId"]
    assert volume_exists(cloud, home_volume(old))
    assert move_snapshots(cloud) == []


def test_a_stopped_server_with_no_capacity_in_its_zone_moves_there_with_its_files(hub, cloud):
    """Its zone refuses StartInstances: the home volume is snapshotted, a new instance runs
    in another zone with a home volume made from it, the files are there; the old instance,
    its volume and the snapshot are removed, each step audited."""
    old = ensure_stopped_with_file(hub, cloud)
    lines_before = len(hub.audit_lines())
    refuse(cloud, "StartInstances", None, count=1)
    start_server(hub, "alice", AD)
    [new] = [
        i
        for i in instances_of(cloud, "alice", hub_id=HUB_ID)
        if i["State"]["Name"] not in ("terminated", "shutting-down")
    ]
    assert new["InstanceId"] != old["InstanceId"]
    assert new["Placement"]["AvailabilityZone"] != old["Placement"]["AvailabilityZone"]
    assert file_kept(hub)
    assert not volume_exists(cloud, home_volume(old))
    assert move_snapshots(cloud) == []
    actions = [(r["action"], r.get("reason", "")) for r in hub.audit_lines()[lines_before:]]
    moved = [a for a, reason in actions if "zone move" in reason]
    assert moved == ["snapshot", "launch", "terminate", "delete_volume", "delete_snapshot"]
    stop_server(hub, "alice")


def test_a_zone_move_whose_cleanup_fails_keeps_both_copies(hub, cloud):
    """Step 3 fails (TerminateInstances refused): the server runs moved, with its files; the
    old instance stays stopped with its volume, and the audit log says so."""
    old = ensure_stopped_with_file(hub, cloud)
    lines_before = len(hub.audit_lines())
    refuse(cloud, "StartInstances", None, count=1)
    fault(cloud, "TerminateInstances", "UnauthorizedOperation", count=1)
    start_server(hub, "alice", AD)
    assert file_kept(hub)
    states = {
        i["InstanceId"]: i["State"]["Name"] for i in instances_of(cloud, "alice", hub_id=HUB_ID)
    }
    assert states[old["InstanceId"]] == "stopped" and volume_exists(cloud, home_volume(old))
    kept = [r for r in hub.audit_lines()[lines_before:] if r["action"] == "keep_volume"]
    assert kept and "TerminateInstances" in kept[0]["reason"]
    stop_server(hub, "alice")
