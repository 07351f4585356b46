"""The zone move's steps (`spawner.zone_move`) against a scripted EC2: a snapshot that fails
or never completes is deleted and reported; the clean-up after a move removes the old
instance, its volume once detached and the snapshot, and reports every step it could not do
instead of raising. The whole move with a real hub is ``tests/integration/test_capacity.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from spawner.aws import AwsError, ErrorKind
from spawner.poller import InstanceView
from spawner.zone_move import (
    TAG_ZONE_MOVE,
    MoveFailed,
    move_snapshot_tags,
    retire_old,
    snapshot_home,
)

VIEW = InstanceView(
    instance_id="i-0123456789abcdef0",
    state="stopped",
    instance_type="t3.large",
    availability_zone="us-east-1a",
    tags={"jupyterhub:hub": "h", "jupyterhub:user": "alice", "aws:cloudformation:x": "no"},
)


class ScriptedEc2:
    """``Aws.call`` answering from a script: per operation, a list of answers (a dict, or an
    AwsError to raise), the last one repeated."""

    def __init__(self, **script: list[Any]) -> None:
        self.script = script
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        self.calls.append((operation, params))
        answers = self.script.get(operation, [{}])
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, AwsError):
            raise answer
        return answer

    def operations(self) -> list[str]:
        return [op for op, _ in self.calls]


def error(operation: str, code: str, kind: ErrorKind = ErrorKind.OTHER) -> AwsError:
    return AwsError(operation, code, "scripted", kind)


async def no_sleep(_: float) -> None:
    return None


def test_the_snapshot_carries_the_instances_tags_and_says_what_it_is_for() -> None:
    tags = {t["Key"]: t["Value"] for t in move_snapshot_tags(VIEW)}
    assert tags["jupyterhub:user"] == "alice" and "aws:cloudformation:x" not in tags
    assert tags["jupyterhub:snapshot-of"] == VIEW.instance_id
    assert tags[TAG_ZONE_MOVE] == "us-east-1a"


def test_a_completed_snapshot_gives_its_id_and_size() -> None:
    ec2 = ScriptedEc2(
        create_snapshot=[{"SnapshotId": "snap-1"}],
        describe_snapshots=[
            {"Snapshots": [{"State": "pending", "Progress": "40%"}]},
            {"Snapshots": [{"State": "completed", "VolumeSize": 50}]},
        ],
    )
    said: list[str] = []
    found = asyncio.run(snapshot_home(ec2, VIEW, "vol-1", progress=said.append, sleep=no_sleep))
    assert found == ("snap-1", 50) and said == ["Copying your home volume: 40%…"]
    assert "delete_snapshot" not in ec2.operations()


def test_a_snapshot_not_yet_visible_is_waited_for() -> None:
    """EC2 is eventually consistent: DescribeSnapshots may not know a snapshot just made."""
    ec2 = ScriptedEc2(
        create_snapshot=[{"SnapshotId": "snap-1"}],
        describe_snapshots=[
            error("DescribeSnapshots", "InvalidSnapshot.NotFound", ErrorKind.NOT_FOUND),
            {"Snapshots": []},
            {"Snapshots": [{"State": "completed", "VolumeSize": 20}]},
        ],
    )
    found = asyncio.run(snapshot_home(ec2, VIEW, "vol-1", progress=lambda _: None, sleep=no_sleep))
    assert found == ("snap-1", 20)


@pytest.mark.parametrize(
    ("describe", "says"),
    [
        ([{"Snapshots": [{"State": "error"}]}], "is 'error'"),
        ([error("DescribeSnapshots", "UnauthorizedOperation")], "DescribeSnapshots of snap-1"),
        ([{"Snapshots": [{"State": "pending"}]}], "not completed in 0s"),
    ],
)
def test_a_snapshot_that_fails_is_deleted_and_reported(describe, says) -> None:
    ec2 = ScriptedEc2(create_snapshot=[{"SnapshotId": "snap-1"}], describe_snapshots=describe)
    with pytest.raises(MoveFailed, match=says):
        asyncio.run(
            snapshot_home(ec2, VIEW, "vol-1", progress=lambda _: None, timeout=0, sleep=no_sleep)
        )
    assert ec2.calls[-1] == ("delete_snapshot", {"SnapshotId": "snap-1"})


def test_a_refused_snapshot_changes_nothing() -> None:
    ec2 = ScriptedEc2(create_snapshot=[error("CreateSnapshot", "UnauthorizedOperation")])
    with pytest.raises(MoveFailed, match="CreateSnapshot of vol-1 failed"):
        asyncio.run(snapshot_home(ec2, VIEW, "vol-1", progress=lambda _: None))
    assert ec2.operations() == ["create_snapshot"]


def retire(ec2: ScriptedEc2, timeout: float = 60) -> list[tuple[str, str]]:
    return asyncio.run(
        retire_old(ec2, "i-old", "vol-old", "snap-1", timeout=timeout, sleep=no_sleep)
    )


def test_the_clean_up_waits_for_the_volume_to_detach_then_deletes_it_and_the_snapshot() -> None:
    ec2 = ScriptedEc2(
        describe_volumes=[
            {"Volumes": [{"State": "in-use"}]},
            {"Volumes": [{"State": "available"}]},
        ]
    )
    assert retire(ec2) == [
        ("terminate", "i-old"),
        ("delete_volume", "vol-old"),
        ("delete_snapshot", "snap-1"),
    ]


def test_a_volume_deleted_with_its_instance_is_not_deleted_again() -> None:
    ec2 = ScriptedEc2(describe_volumes=[error("DescribeVolumes", "InvalidVolume.NotFound")])
    assert [a for a, _ in retire(ec2)] == ["terminate", "delete_volume", "delete_snapshot"]
    assert "delete_volume" not in ec2.operations()


@pytest.mark.parametrize(
    ("script", "kept"),
    [
        ({"terminate_instances": [error("TerminateInstances", "UnauthorizedOperation")]}, "stays"),
        (
            {
                "describe_volumes": [{"Volumes": [{"State": "available"}]}],
                "delete_volume": [error("DeleteVolume", "VolumeInUse")],
            },
            "DeleteVolume of vol-old failed (VolumeInUse)",
        ),
        ({"describe_volumes": [{"Volumes": [{"State": "in-use"}]}]}, "still 'in-use'"),
    ],
)
def test_a_failed_clean_up_step_keeps_what_is_left_and_says_so(script, kept) -> None:
    done = retire(ScriptedEc2(**script), timeout=0)
    assert done[-1][0] == "keep_volume" and kept in done[-1][1]
    assert ("delete_snapshot", "snap-1") not in done  # the snapshot outlives a kept volume
