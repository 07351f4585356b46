"""The dormancy reaper (``snh reap``) against the local cloud, with a real hub:
two users' stopped servers in communities with different volume policies are listed by a dry
run that changes nothing, then removed by a real run: the home volume of the snapshotting
community is snapshotted (tagged like the instance, plus ``jupyterhub:snapshot-of``) before
the instance is terminated, the other's is not; both volumes go with their instances; the audit
log has the reaper's lines; the hub shows the servers stopped, and Start launches a new one.

The servers are made dormant with ``--now`` (the reaper as if it were 61 days later), not by
waiting: EC2's ``StateTransitionReason`` carries the real time of the stop. What EC2 does is
from its API reference: ``CreateSnapshot`` (tags via ``TagSpecifications``),
``TerminateInstances`` (volumes with ``DeleteOnTermination`` are deleted with the instance).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from hub_config import load_communities
from spawner.naming import TAG_SNAPSHOT_OF

from .harness import (
    REPO,
    SERVICE_TOKEN,
    hub_env,
    hub_test_config,
    sign_in,
    start_hub,
    wait_until,
)
from .spawn_harness import moto, start_server, stop_server

pytestmark = pytest.mark.integration

DAY = dt.timedelta(days=1)
HUB_ID = "reaper-test"  # its own instances: other modules' stopped servers are not reaped
NF_POLICY = (
    "delete_on_termination: false         # keep volumes after termination for manual recovery"
)


@pytest.fixture(scope="module")
def setup(cloud, tmp_path_factory):
    """The local cloud's communities with nf-osc's volumes not snapshotted (and deleted with
    their instances); ad-portal keeps the demo's policy: snapshot, then delete."""
    state = tmp_path_factory.mktemp("hub-reaper")
    source = Path(cloud.endpoints["aws"]["communities_file"]).read_text()
    assert source.count(NF_POLICY) == 1
    variant = state / "communities.yaml"
    variant.write_text(
        source.replace(
            NF_POLICY, "snapshot_before_delete: false\n      delete_on_termination: true"
        )
    )
    policies = {c.id: c.volume_policy for c in load_communities(variant).communities}
    assert policies["ad-portal"].snapshot_before_delete is True
    assert policies["nf-osc"].snapshot_before_delete is False
    assert policies["nf-osc"].delete_on_termination is True
    extra = "c.Spawner.poll_interval = 2\nc.EC2Spawner.instance_poll_interval = 1\n"
    env = hub_env(
        cloud,
        state,
        SNH_HUB_ID=HUB_ID,
        SNH_COMMUNITIES_FILE=str(variant),
        SNH_EXTRA_CONFIG=str(hub_test_config(state, extra=extra)),
    )
    hub = start_hub(env, state / "hub.log")
    yield hub, env, variant, state / "audit.log"
    hub.stop()


def reap(env: dict[str, str], variant: Path, audit_log: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "operations", "reap", "--json", "--hub-id", HUB_ID,
         "--communities", str(variant), "--audit-log", str(audit_log), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def instance(cloud, instance_id: str) -> dict[str, Any]:
    answer = moto(cloud, "ec2").describe_instances(InstanceIds=[instance_id])
    return answer["Reservations"][0]["Instances"][0]


def home_volume(raw: dict[str, Any]) -> str:
    return next(
        b["Ebs"]["VolumeId"] for b in raw["BlockDeviceMappings"] if b["DeviceName"] == "/dev/sdf"
    )


def snapshots_of(cloud, volume_id: str) -> list[dict[str, Any]]:
    return moto(cloud, "ec2").describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "volume-id", "Values": [volume_id]}]
    )["Snapshots"]


def reaper_lines(audit_log: Path) -> list[dict[str, Any]]:
    if not audit_log.exists():
        return []
    records = [json.loads(line) for line in audit_log.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("actor") == "reaper"]


def metric(hub, name: str, **labels: str) -> float:
    text = requests.get(
        f"{hub.url}/hub/metrics", headers={"Authorization": f"token {SERVICE_TOKEN}"}, timeout=30
    ).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_dormant_servers_are_listed_then_removed_per_their_communitys_policy(setup, cloud):
    hub, env, variant, audit_log = setup
    sign_in(hub, "alice")  # ad-portal
    sign_in(hub, "bob")  # ad-portal and nf-osc
    servers = {
        "alice": start_server(hub, "alice", {"community": "ad-portal"}),
        "bob": start_server(hub, "bob", {"community": "nf-osc"}),
    }
    ids = {user: model["state"]["instance_id"] for user, model in servers.items()}
    for user in servers:
        stop_server(hub, user)
    raw = {user: instance(cloud, iid) for user, iid in ids.items()}
    assert {r["State"]["Name"] for r in raw.values()} == {"stopped"}
    volumes = {user: home_volume(r) for user, r in raw.items()}
    now = dt.datetime.now(dt.UTC)

    # Today nothing is due; in 31 days ad-portal's 30 days have passed, not nf-osc's 60.
    today = reap(env, variant, audit_log, "--dry-run")
    assert {i["instance_id"]: i["action"] for i in today["instances"]} == {
        ids["alice"]: "keep",
        ids["bob"]: "keep",
    }
    month = reap(env, variant, audit_log, "--dry-run", "--now", (now + 31 * DAY).isoformat())
    assert {i["instance_id"]: i["action"] for i in month["instances"]} == {
        ids["alice"]: "remove",
        ids["bob"]: "keep",
    }

    # In 61 days both are due; the dry run says what it would do and does nothing.
    later = (now + 61 * DAY).isoformat()
    preview = reap(env, variant, audit_log, "--dry-run", "--now", later)
    assert preview["dry_run"] is True
    listed = {i["instance_id"]: i for i in preview["instances"]}
    assert listed[ids["alice"]]["done"] == "snapshot home volume, terminate"
    assert listed[ids["alice"]]["user"] == "alice"
    assert listed[ids["alice"]]["community"] == "ad-portal"
    assert listed[ids["bob"]]["done"].startswith("terminate (no snapshot")
    assert {instance(cloud, i)["State"]["Name"] for i in ids.values()} == {"stopped"}
    assert all(snapshots_of(cloud, v) == [] for v in volumes.values())
    assert reaper_lines(audit_log) == []

    # The real run.
    report = reap(env, variant, audit_log, "--now", later, "--wait-for-snapshots", "30")
    done = {i["instance_id"]: i for i in report["instances"]}
    assert done[ids["alice"]]["done"].startswith("terminated; home volume deleted with the inst")
    assert done[ids["bob"]]["done"].startswith("terminated; home volume deleted with the inst")
    for user, iid in ids.items():
        assert instance(cloud, iid)["State"]["Name"] in ("shutting-down", "terminated"), user
    [snapshot] = snapshots_of(cloud, volumes["alice"])
    assert snapshot["SnapshotId"] == done[ids["alice"]]["snapshot_id"]
    tags = {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}
    assert tags[TAG_SNAPSHOT_OF] == ids["alice"]
    assert tags["jupyterhub:hub"] == HUB_ID and tags["jupyterhub:user"] == "alice"
    assert tags["jupyterhub:community"] == "ad-portal" and tags["CostCenter"] == "AD-123"
    assert snapshots_of(cloud, volumes["bob"]) == []  # nf-osc: no snapshot
    found = moto(cloud, "ec2").describe_volumes(
        Filters=[{"Name": "volume-id", "Values": list(volumes.values())}]
    )["Volumes"]
    assert found == []  # both home volumes went with their instances

    lines = reaper_lines(audit_log)
    assert [(r["action"], r["instance_id"]) for r in lines if r["user"] == "alice"] == [
        ("snapshot", ids["alice"]),
        ("terminate", ids["alice"]),
    ]
    assert [(r["action"], r["instance_id"]) for r in lines if r["user"] == "bob"] == [
        ("terminate", ids["bob"])
    ]
    assert all(r["reason"].startswith("dormant: stopped 61 days") for r in lines)

    # The hub's view: its poller counts the terminated instances (snh_instances, a gauge
    # of what the poller last saw); the servers are stopped.
    def terminated(user: str, community: str) -> bool:
        labels = {"community": community, "instance_type": raw[user]["InstanceType"]}
        return metric(hub, "snh_instances", **labels, state="terminated") == 1

    wait_until(
        lambda: terminated("alice", "ad-portal") and terminated("bob", "nf-osc"),
        120,  # generous: a CI run on two busy cores missed 20 s
        "the hub's poller to see the instances terminated",
        interval=0.5,
    )
    stopped = hub.api("GET", "/users/alice?include_stopped_servers=1").json()["servers"][""]
    assert not stopped["ready"] and not stopped["pending"]

    # Start: a new instance (the terminated one cannot be resumed), on a new volume.
    again = start_server(hub, "alice", {"community": "ad-portal"})
    fresh = again["state"]["instance_id"]
    assert fresh != ids["alice"]
    assert instance(cloud, fresh)["State"]["Name"] == "running"
    assert home_volume(instance(cloud, fresh)) != volumes["alice"]
    stop_server(hub, "alice")
