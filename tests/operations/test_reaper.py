"""The dormancy reaper and snapshot-then-terminate, against moto in this process.

moto writes "User initiated (… UTC)" where EC2 writes "… GMT", and stops at the real time, so
the tests set each instance's stop time themselves, in EC2's format, and give the reaper its
"now".
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import boto3
import pytest

from hub_config import DEFAULT_COMMUNITIES_PATH, load_communities
from operations import audit
from operations.audit import Actor, AuditLog
from operations.cli import main
from operations.reaper import Reaper, last_stop_times, plan, removal_date
from spawner.aws import Aws
from spawner.naming import TAG_DELETE_AFTER_SNAPSHOT, TAG_SNAPSHOT_OF
from spawner.poller import InstanceView
from spawner.region import Regions
from spawner.removal import RemovalError, delete_volumes_after_snapshots, snapshot_then_terminate

REGION = "us-east-1"
HUB = "hub-test"
AMI = "ami-03cf127a"  # one of moto's own (listing them takes seconds)
DEMO = load_communities(DEFAULT_COMMUNITIES_PATH)
AD, NF = DEMO.communities  # dormancy 30 days, volume deleted / 60 days, volume kept
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)


@pytest.fixture
def aws(moto_aws):
    return FakeAws(REGION)


@pytest.fixture
def ec2(aws):
    return boto3.client("ec2", region_name=REGION)


@pytest.fixture
def log(tmp_path):
    return AuditLog(tmp_path / "audit.log", logger=None)


def records(log: AuditLog) -> list[dict[str, Any]]:
    log.flush()
    return log.read()


def launch(
    ec2,
    user: str,
    *,
    server: str = "_",
    community: str = "ad-portal",
    delete_home: bool = True,
    hub: str = HUB,
) -> str:
    tags = [
        {"Key": "Name", "Value": f"notebook-{user}"},
        {"Key": "synapse:ownerId", "Value": "3412345"},
        {"Key": "jupyterhub:hub", "Value": hub},
        {"Key": "jupyterhub:user", "Value": user},
        {"Key": "jupyterhub:server", "Value": server},
        {"Key": "jupyterhub:community", "Value": community},
        {"Key": "CostCenter", "Value": "AD-123"},
    ]
    answer = ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.large",
        BlockDeviceMappings=[
            {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 30, "DeleteOnTermination": True}},
            {
                "DeviceName": "/dev/sdf",
                "Ebs": {"VolumeSize": 50, "DeleteOnTermination": delete_home},
            },
        ],
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
    )
    return answer["Instances"][0]["InstanceId"]


class FakeAws(Aws):
    """The hub's AWS calls, to moto, with two things moto does not do as EC2 does: the time
    of a stop in ``StateTransitionReason`` (moto 5.0 writes none, later ones "… UTC" where
    EC2 writes "… GMT"), taken from ``stop_times``; and the state of snapshots, which moto
    reports differently from one version to the next: ``snapshot_state`` is what EC2 says of
    every snapshot (EC2's own first answer is "pending"; set that to test waiting)."""

    def __init__(self, region: str) -> None:
        super().__init__(region)
        self.stop_times: dict[str, dt.datetime | None] = {}
        self.snapshot_state = "completed"

    async def call(self, service: str, operation: str, **kwargs: Any) -> dict[str, Any]:
        return self._fake(operation, await super().call(service, operation, **kwargs))

    async def paginate(self, service: str, operation: str, **kwargs: Any) -> list[dict[str, Any]]:
        pages = await super().paginate(service, operation, **kwargs)
        return [self._fake(operation, page) for page in pages]

    def _fake(self, operation: str, answer: dict[str, Any]) -> dict[str, Any]:
        if operation == "describe_instances":
            for reservation in answer.get("Reservations", []):
                for raw in reservation["Instances"]:
                    if raw["State"]["Name"] == "stopped":
                        at = self.stop_times.get(raw["InstanceId"])
                        when = f" ({at:%Y-%m-%d %H:%M:%S} GMT)" if at else ""
                        raw["StateTransitionReason"] = f"User initiated{when}"
        elif self.snapshot_state and operation == "create_snapshot":
            answer = {**answer, "State": self.snapshot_state}
        elif self.snapshot_state and operation == "describe_snapshots":
            answer = {
                **answer,
                "Snapshots": [{**s, "State": self.snapshot_state} for s in answer["Snapshots"]],
            }
        return answer


def stop(aws: FakeAws, ec2, instance_id: str, at: dt.datetime | None) -> None:
    """Stop, as if at ``at`` (None: EC2 gives no time)."""
    ec2.stop_instances(InstanceIds=[instance_id])
    aws.stop_times[instance_id] = at


async def view_of(aws: Aws, instance_id: str) -> InstanceView:
    answer = await aws.call("ec2", "describe_instances", InstanceIds=[instance_id])
    return InstanceView.from_api(answer["Reservations"][0]["Instances"][0])


def describe(ec2, instance_id: str) -> dict[str, Any]:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def home_volume(raw: dict[str, Any]) -> str:
    return next(
        b["Ebs"]["VolumeId"] for b in raw["BlockDeviceMappings"] if b["DeviceName"] == "/dev/sdf"
    )


def snapshots(ec2) -> list[dict[str, Any]]:
    """The hub's snapshots (moto's account also holds its AMIs' snapshots)."""
    return ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": [TAG_SNAPSHOT_OF]}]
    )["Snapshots"]


def volume_state(ec2, volume_id: str) -> str | None:
    found = ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume_id]}])
    return found["Volumes"][0]["State"] if found["Volumes"] else None


def reaper(aws, log, **kwargs) -> Reaper:
    kwargs.setdefault("now", lambda: NOW)
    kwargs.setdefault("wait_for_snapshot", 0)
    return Reaper(lambda region: aws, HUB, [REGION], DEMO, audit_log=log, **kwargs)


# ------------------------------------------------------------------------------------------
# Pure parts
# ------------------------------------------------------------------------------------------


def stopped_view(instance_id, since, community="ad-portal", state="stopped") -> InstanceView:
    tags = {"jupyterhub:hub": HUB, "jupyterhub:user": "alice", "jupyterhub:server": "_"}
    if community:
        tags["jupyterhub:community"] = community
    return InstanceView(instance_id, state, "t3.large", tags, state_since=since)


def test_plan_follows_each_communitys_dormancy():
    views = [
        stopped_view("i-ad-due", NOW - 31 * DAY),
        stopped_view("i-ad-fresh", NOW - 29 * DAY),
        stopped_view("i-nf-fresh", NOW - 45 * DAY, "nf-osc"),  # nf-osc: 60 days
        stopped_view("i-nf-due", NOW - 61 * DAY, "nf-osc"),
        stopped_view("i-gone", NOW - 31 * DAY, "removed-community"),  # default 30 days
        stopped_view("i-untagged", NOW - 29 * DAY, None),
        stopped_view("i-undated", None),
        stopped_view("i-running", NOW - 90 * DAY, state="running"),
    ]
    plans = {p.view.instance_id: p for p in plan(views, DEMO, NOW)}
    assert set(plans) == set(plans) - {"i-running"} and "i-running" not in plans
    assert {i for i, p in plans.items() if p.action == "remove"} == {
        "i-ad-due",
        "i-nf-due",
        "i-gone",
    }
    assert plans["i-ad-fresh"].action == "keep"
    assert plans["i-ad-fresh"].removal_date == NOW + DAY
    assert plans["i-nf-fresh"].removal_date == NOW + 15 * DAY
    assert "not in the communities file: 30 days" in plans["i-gone"].reason
    assert "no community tag" in plans["i-untagged"].reason
    assert (plans["i-undated"].action, plans["i-undated"].reason) == ("skip", "stop time unknown")
    assert plans["i-ad-due"].describe_action() == "snapshot home volume, terminate"
    assert plans["i-ad-due"].reason == "stopped 31 days, longer than 30"
    # oldest stop first
    assert plan(views, DEMO, NOW)[0].view.instance_id == "i-nf-due"


def test_plan_uses_the_audit_logs_stop_time_when_ec2_gives_none():
    undated = stopped_view("i-1", None)
    [item] = plan([undated], DEMO, NOW, stop_times={"i-1": NOW - 40 * DAY})
    assert item.action == "remove" and item.stopped_since == NOW - 40 * DAY


def test_removal_date_for_the_home_page():
    assert removal_date(stopped_view("i", NOW - 10 * DAY), AD) == NOW + 20 * DAY
    assert removal_date(stopped_view("i", NOW - 10 * DAY), NF) == NOW + 50 * DAY
    assert removal_date(stopped_view("i", NOW - 10 * DAY), None) == NOW + 20 * DAY
    assert removal_date(stopped_view("i", None), AD) is None
    assert removal_date(stopped_view("i", NOW, state="running"), AD) is None
    assert removal_date(stopped_view("i", None), AD, stopped_at=NOW) == NOW + 30 * DAY


def test_last_stop_times_ignore_stops_followed_by_a_start():
    def line(t, action, instance_id, **extra):
        return {"time": audit.isoformat(t), "action": action, "instance_id": instance_id, **extra}

    times = last_stop_times(
        [
            line(NOW - 9 * DAY, "stop", "i-a"),
            line(NOW - 8 * DAY, "resume", "i-a"),
            line(NOW - 7 * DAY, "stop", "i-b"),
            line(NOW - 6 * DAY, "stopped", "i-b"),
            line(NOW - 5 * DAY, "stop", "i-c", outcome="failed"),
            line(NOW - 4 * DAY, "stop", "i-d", dry_run=True),
        ]
    )
    assert times == {"i-b": NOW - 6 * DAY}


# ------------------------------------------------------------------------------------------
# The reaper on moto
# ------------------------------------------------------------------------------------------


async def test_dry_run_lists_and_changes_nothing(aws, ec2, log):
    due = launch(ec2, "alice")
    fresh = launch(ec2, "bob")
    stop(aws, ec2, due, NOW - 40 * DAY)
    stop(aws, ec2, fresh, NOW - 3 * DAY)
    report = await reaper(aws, log, dry_run=True).run()
    done = {o.plan.view.instance_id: o.done for o in report.outcomes}
    assert done[due] == "snapshot home volume, terminate"
    assert done[fresh].startswith("keep: until ")
    assert describe(ec2, due)["State"]["Name"] == "stopped"
    assert snapshots(ec2) == [] and records(log) == []
    assert report.ok


async def test_dormant_instance_is_snapshotted_then_terminated(aws, ec2, log):
    due = launch(ec2, "alice")
    fresh = launch(ec2, "bob")
    running = launch(ec2, "carol")
    foreign = launch(ec2, "dave", hub="another-hub")
    stop(aws, ec2, due, NOW - 40 * DAY)
    stop(aws, ec2, fresh, NOW - 3 * DAY)
    stop(aws, ec2, foreign, NOW - 400 * DAY)
    volume = home_volume(describe(ec2, due))
    report = await reaper(aws, log).run()
    assert report.ok

    assert describe(ec2, due)["State"]["Name"] == "terminated"
    for untouched, state in ((fresh, "stopped"), (running, "running"), (foreign, "stopped")):
        assert describe(ec2, untouched)["State"]["Name"] == state
    [snapshot] = snapshots(ec2)
    assert snapshot["VolumeId"] == volume
    tags = {t["Key"]: t["Value"] for t in snapshot["Tags"]}
    assert tags[TAG_SNAPSHOT_OF] == due
    assert tags["jupyterhub:user"] == "alice" and tags["jupyterhub:hub"] == HUB
    assert tags["CostCenter"] == "AD-123" and tags["Name"] == "notebook-alice"
    assert "before: dormant" in snapshot["Description"]
    assert volume_state(ec2, volume) is None  # the snapshot completed: deleted with the instance

    lines = records(log)
    assert [(r["action"], r["actor"]) for r in lines] == [
        ("snapshot", "reaper"),
        ("terminate", "reaper"),
    ]
    terminate = lines[1]
    assert terminate["instance_id"] == due and terminate["user"] == "alice"
    assert (
        terminate["community"] == "ad-portal" and terminate["snapshot_id"] == snapshot["SnapshotId"]
    )
    assert terminate["volume_fate"].startswith("deleted with the instance")
    assert "stopped 40 days" in terminate["reason"]


async def test_a_home_volume_not_deleted_on_termination_is_left_and_said_so(aws, ec2, log):
    due = launch(ec2, "bob", community="nf-osc", delete_home=False)
    not_yet = launch(ec2, "erin", community="nf-osc", delete_home=False)
    stop(aws, ec2, due, NOW - 61 * DAY)
    stop(aws, ec2, not_yet, NOW - 45 * DAY)  # dormant for ad-portal, not for nf-osc (60 days)
    volume = home_volume(describe(ec2, due))
    report = await reaper(aws, log).run()
    assert describe(ec2, due)["State"]["Name"] == "terminated"
    assert describe(ec2, not_yet)["State"]["Name"] == "stopped"
    assert volume_state(ec2, volume) == "available"
    [outcome] = [o for o in report.outcomes if o.result]
    assert "DeleteOnTermination is false" in outcome.result.volume_fate
    actions = [r["action"] for r in records(log)]
    assert actions == ["snapshot", "terminate", "keep_volume"]
    assert records(log)[-1]["volume_id"] == volume


async def test_undatable_stops_are_left_alone_unless_the_audit_log_dates_them(aws, ec2, log):
    undatable = launch(ec2, "alice")
    stop(aws, ec2, undatable, None)
    report = await reaper(aws, log).run()
    assert [o.done for o in report.outcomes] == ["skip: stop time unknown"]
    assert describe(ec2, undatable)["State"]["Name"] == "stopped"
    log.record("stop", "culler", instance_id=undatable, time=NOW - 35 * DAY)
    log.flush()
    await reaper(aws, log).run()
    assert describe(ec2, undatable)["State"]["Name"] == "terminated"


async def test_an_instance_started_again_is_not_reaped(aws, ec2, log):
    instance = launch(ec2, "alice")
    stop(aws, ec2, instance, NOW - 40 * DAY)
    [item] = plan([await view_of(aws, instance)], DEMO, NOW)
    assert item.action == "remove"
    ec2.start_instances(InstanceIds=[instance])  # alice came back meanwhile
    result = await snapshot_then_terminate(
        aws, item.view, AD, audit.REAPER, "dormant", audit_log=log, require_stopped=True
    )
    assert result.skipped == "it is running now" and not result.terminated
    assert describe(ec2, instance)["State"]["Name"] == "running"
    assert snapshots(ec2) == []
    assert [(r["action"], r["state"]) for r in records(log)] == [("skip", "running")]


async def test_an_instance_stopped_again_since_the_plan_is_not_reaped(aws, ec2, log):
    instance = launch(ec2, "alice")
    stop(aws, ec2, instance, NOW - 40 * DAY)
    [item] = plan([await view_of(aws, instance)], DEMO, NOW)
    ec2.start_instances(InstanceIds=[instance])
    stop(aws, ec2, instance, NOW - DAY)
    result = await snapshot_then_terminate(
        aws, item.view, AD, audit.REAPER, "dormant", audit_log=log, require_stopped=True
    )
    assert result.skipped.startswith("started and stopped again since")
    assert describe(ec2, instance)["State"]["Name"] == "stopped"


# ------------------------------------------------------------------------------------------
# Snapshot, then terminate: the delete path, pending and failed snapshots
# ------------------------------------------------------------------------------------------


async def test_deleting_a_running_server_stops_it_before_the_snapshot(aws, ec2, log):
    instance = launch(ec2, "alice", server="gpu")
    view = await view_of(aws, instance)
    carol = Actor("admin", "carol")
    result = await snapshot_then_terminate(
        aws, view, AD, carol, "server deleted", audit_log=log, sleep=_no_wait
    )
    assert result.terminated and result.actions == ["stop", "snapshot", "terminate"]
    assert describe(ec2, instance)["State"]["Name"] == "terminated"
    lines = records(log)
    assert [(r["action"], r["actor"], r.get("actor_name")) for r in lines] == [
        ("stop", "admin", "carol"),
        ("snapshot", "admin", "carol"),
        ("terminate", "admin", "carol"),
    ]
    assert lines[0]["server"] == "gpu" and lines[0]["previous_state"] == "running"


async def test_no_snapshot_when_the_policy_says_so(aws, ec2, log):
    from dataclasses import replace

    from hub_config.communities import VolumePolicy

    no_snapshots = replace(AD, volume_policy=VolumePolicy(snapshot_before_delete=False))
    instance = launch(ec2, "alice")
    stop(aws, ec2, instance, NOW - 40 * DAY)
    view = await view_of(aws, instance)
    result = await snapshot_then_terminate(
        aws, view, no_snapshots, "user", "deleted", audit_log=log
    )
    assert result.snapshot_id is None and snapshots(ec2) == []
    assert "no snapshot" in result.volume_fate
    assert describe(ec2, instance)["State"]["Name"] == "terminated"


async def test_a_snapshot_of_the_same_stop_is_reused(aws, ec2, log):
    instance = launch(ec2, "alice")
    stop(aws, ec2, instance, NOW - 40 * DAY)
    raw = describe(ec2, instance)
    earlier = ec2.create_snapshot(
        VolumeId=home_volume(raw),
        TagSpecifications=[
            {"ResourceType": "snapshot", "Tags": [{"Key": TAG_SNAPSHOT_OF, "Value": instance}]}
        ],
    )
    result = await snapshot_then_terminate(
        aws, InstanceView.from_api(raw), AD, audit.REAPER, "dormant", audit_log=log
    )
    assert result.snapshot_id == earlier["SnapshotId"] and len(snapshots(ec2)) == 1
    assert [r["action"] for r in records(log)] == ["terminate"]


async def _no_wait(seconds: float) -> None:
    return None


async def test_a_pending_snapshot_keeps_the_volume_until_it_completes(aws, ec2, log):
    aws.snapshot_state = "pending"
    instance = launch(ec2, "alice")
    stop(aws, ec2, instance, NOW - 40 * DAY)
    raw = describe(ec2, instance)
    volume = home_volume(raw)
    result = await snapshot_then_terminate(
        aws, InstanceView.from_api(raw), AD, audit.REAPER, "dormant", audit_log=log
    )
    assert result.terminated and result.snapshot_state == "pending"
    assert result.volume_fate.startswith(f"kept until snapshot {result.snapshot_id} completes")
    assert describe(ec2, instance)["State"]["Name"] == "terminated"
    assert volume_state(ec2, volume) == "available"  # DeleteOnTermination was turned off
    tags = {
        t["Key"]: t["Value"] for t in ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["Tags"]
    }
    assert tags[TAG_DELETE_AFTER_SNAPSHOT] == result.snapshot_id

    assert await delete_volumes_after_snapshots(aws, HUB, audit_log=log) == [
        (volume, f"waiting for snapshot {result.snapshot_id}")
    ]
    aws.snapshot_state = "completed"
    assert await delete_volumes_after_snapshots(aws, HUB, audit_log=log, dry_run=True) == [
        (volume, f"would delete (snapshot {result.snapshot_id} completed)")
    ]
    assert volume_state(ec2, volume) == "available"
    assert await delete_volumes_after_snapshots(aws, HUB, audit_log=log) == [(volume, "deleted")]
    assert volume_state(ec2, volume) is None
    actions = [(r["action"], r["actor"]) for r in records(log)]
    assert actions == [
        ("snapshot", "reaper"),
        ("terminate", "reaper"),
        ("keep_volume", "reaper"),
        ("delete_volume", "reaper"),
    ]


async def test_a_snapshot_completing_while_waited_for_goes_with_the_instance(aws, ec2, log):
    instance = launch(ec2, "alice")
    stop(aws, ec2, instance, NOW - 40 * DAY)
    raw = describe(ec2, instance)
    aws.snapshot_state = "pending"  # EC2's first answer

    async def snapshot_progresses(seconds: float) -> None:
        aws.snapshot_state = "completed"

    result = await snapshot_then_terminate(
        aws, await view_of(aws, instance), AD, audit.REAPER, "dormant", audit_log=log,
        wait_for_snapshot=60, sleep=snapshot_progresses,
    )  # fmt: skip
    assert result.snapshot_state == "completed"
    assert result.volume_fate == f"deleted with the instance (snapshot {result.snapshot_id})"
    assert volume_state(ec2, home_volume(raw)) is None


async def test_a_failed_snapshot_keeps_the_volume_for_good(aws, ec2, log):
    aws.snapshot_state = "pending"
    instance = launch(ec2, "alice")
    stop(aws, ec2, instance, NOW - 40 * DAY)
    raw = describe(ec2, instance)
    volume = home_volume(raw)
    await snapshot_then_terminate(
        aws, InstanceView.from_api(raw), AD, audit.REAPER, "dormant", audit_log=log
    )
    aws.snapshot_state = "error"
    [(_, done)] = await delete_volumes_after_snapshots(aws, HUB, audit_log=log)
    assert "is error: volume kept" in done
    assert volume_state(ec2, volume) == "available"
    assert await delete_volumes_after_snapshots(aws, HUB, audit_log=log) == []  # once
    last = records(log)[-1]
    assert (last["action"], last["outcome"]) == ("keep_volume", "failed")


async def test_a_snapshot_failing_before_termination_stops_the_removal(aws, ec2, log):
    instance = launch(ec2, "alice")
    stop(aws, ec2, instance, NOW - 40 * DAY)
    view = await view_of(aws, instance)
    aws.snapshot_state = "pending"

    async def fail_then(seconds: float) -> None:
        aws.snapshot_state = "error"

    with pytest.raises(RemovalError, match="not terminated, nothing deleted"):
        await snapshot_then_terminate(
            aws, view, AD, audit.REAPER, "dormant", audit_log=log,
            wait_for_snapshot=60, sleep=fail_then,
        )  # fmt: skip
    assert describe(ec2, instance)["State"]["Name"] == "stopped"
    assert records(log)[-1]["outcome"] == "failed"


async def test_the_reaper_reports_a_failed_removal_and_goes_on(aws, ec2, log):
    first, second = launch(ec2, "alice"), launch(ec2, "bob")
    stop(aws, ec2, first, NOW - 40 * DAY)
    stop(aws, ec2, second, NOW - 41 * DAY)
    aws.snapshot_state = "error"  # every snapshot fails at once
    report = await reaper(aws, log).run()
    assert not report.ok
    assert all(o.done.startswith("FAILED: snapshot") for o in report.outcomes)
    assert {describe(ec2, i)["State"]["Name"] for i in (first, second)} == {"stopped"}


# ------------------------------------------------------------------------------------------
# snh reap
# ------------------------------------------------------------------------------------------


@pytest.fixture
def cli_state():
    """The command configures the process's audit log: undo it."""
    audit_path = audit.get_audit_log().path
    yield
    audit.get_audit_log().flush()
    audit.get_audit_log().path = audit_path


def test_reap_command(aws, ec2, tmp_path, capsys, cli_state):
    due = launch(ec2, "alice")
    fresh = launch(ec2, "bob")
    ec2.stop_instances(InstanceIds=[due, fresh])
    aws.stop_times.update({due: dt.datetime(2000, 1, 1, tzinfo=dt.UTC), fresh: NOW})
    regions = Regions.of(aws)
    audit_log = tmp_path / "audit.log"
    args = ["reap", "--hub-id", HUB, "--communities", str(DEFAULT_COMMUNITIES_PATH),
            "--audit-log", str(audit_log)]  # fmt: skip

    assert main([*args, "--dry-run"], regions=regions) == 0
    out = capsys.readouterr().out
    assert out.startswith("DRY RUN: nothing is changed.")
    [line] = [line for line in out.splitlines() if due in line]
    assert "alice" in line and "ad-portal" in line and "2000-01-01 00:00" in line
    assert line.endswith("snapshot home volume, terminate")
    assert describe(ec2, due)["State"]["Name"] == "stopped"

    assert main([*args, "--json"], regions=regions) == 0
    data = json.loads(capsys.readouterr().out)
    done = {i["instance_id"]: i for i in data["instances"]}
    assert done[due]["done"].startswith("terminated; home volume deleted with the instance")
    assert done[due]["snapshot_id"].startswith("snap-")
    assert done[fresh]["action"] == "keep"
    assert describe(ec2, due)["State"]["Name"] == "terminated"
    lines = [json.loads(x) for x in audit_log.read_text().splitlines()]
    assert [(x["action"], x["actor"]) for x in lines] == [
        ("snapshot", "reaper"),
        ("terminate", "reaper"),
    ]


def test_reap_command_now_previews_a_later_run(aws, ec2, tmp_path, capsys, cli_state):
    """``--now``: the reaper as if it were then. Stopped 10 days ago: ad-portal (30 days)
    is due in 21 days' time, nf-osc (60 days) is not; a real run then removes only that."""
    ad, nf = launch(ec2, "alice"), launch(ec2, "bob", community="nf-osc")
    ec2.stop_instances(InstanceIds=[ad, nf])
    aws.stop_times.update({ad: NOW - 10 * DAY, nf: NOW - 10 * DAY})
    regions = Regions.of(aws)
    later = NOW + 21 * DAY
    args = ["reap", "--hub-id", HUB, "--communities", str(DEFAULT_COMMUNITIES_PATH),
            "--audit-log", str(tmp_path / "audit.log"), "--json"]  # fmt: skip

    assert main([*args, "--dry-run"], regions=regions) == 0
    today = {
        i["instance_id"]: i["action"] for i in json.loads(capsys.readouterr().out)["instances"]
    }
    assert today == {ad: "keep", nf: "keep"}

    assert main([*args, "--dry-run", "--now", later.isoformat()], regions=regions) == 0
    preview = json.loads(capsys.readouterr().out)
    assert preview["now"] == audit.isoformat(later)
    actions = {i["instance_id"]: i["action"] for i in preview["instances"]}
    assert actions == {ad: "remove", nf: "keep"}
    assert describe(ec2, ad)["State"]["Name"] == "stopped"

    assert main([*args, "--now", later.isoformat()], regions=regions) == 0
    capsys.readouterr()
    assert describe(ec2, ad)["State"]["Name"] == "terminated"
    assert describe(ec2, nf)["State"]["Name"] == "stopped"


def test_reap_command_refuses_a_time_it_cannot_read(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["reap", "--now", "next tuesday"])
    assert exit_.value.code == 2
    assert "not an ISO-8601 time: 'next tuesday'" in capsys.readouterr().err


def test_reap_command_refuses_a_bad_communities_file(tmp_path, capsys, cli_state):
    bad = tmp_path / "c.yaml"
    bad.write_text("communities: []\n")
    assert main(["reap", "--communities", str(bad), "--dry-run"]) == 2
    assert "snh reap:" in capsys.readouterr().err


async def test_removal_by_instance_id_for_the_spawner(aws, ec2, log):
    instance = launch(ec2, "alice", server="gpu", community="nf-osc", delete_home=False)
    result = await snapshot_then_terminate(
        aws, instance, NF, Actor("user", "alice"), "server deleted", audit_log=log, sleep=_no_wait
    )
    assert (
        result.terminated
        and result.snapshot_id
        and "DeleteOnTermination is false" in (result.volume_fate)
    )
    assert records(log)[0]["server"] == "gpu" and records(log)[0]["community"] == "nf-osc"
    gone = await snapshot_then_terminate(aws, "i-0123456789abcdef0", NF, "user", "again")
    assert gone.terminated and gone.skipped == "no such instance"
