"""Moving a stopped server to another availability zone when its own has no capacity.

EC2 starts a stopped instance only in its own zone, where its EBS volumes are: when that zone
has no capacity for the type (``InsufficientInstanceCapacity`` from ``StartInstances``), a
server with no other type the user wants would be stuck (SageMaker's stopped spaces are).
The spawner (``EC2Spawner.move_object``, ``zone_move`` on) moves it instead, with these steps,
each shown as progress and written to the audit log:

1. ``CreateSnapshot`` of the home volume (the instance's tags, plus
   ``jupyterhub:snapshot-of`` and ``jupyterhub:zone-move``), waited for until ``completed``:
   a snapshot that ends in ``error`` must never become the only copy of someone's files;
2. ``RunInstances`` in a subnet of another zone, with the home mapping made from the
   snapshot: EC2 creates the new home volume in that zone and attaches it at launch
   (``spawner.launch.run_instances_request(home_snapshot=…)``). Subnet by subnet, as any
   launch; the new instance is the server's from here on;
3. once the new instance runs with its home volume attached: the old instance is
   terminated, then its home volume deleted once it is ``available`` (when the community's
   volume policy keeps volumes at termination), then the snapshot.

**Nothing lost when a step fails.** Steps 1 and 2: the snapshot is deleted and nothing else
changed; the server is still its old instance in its old zone, with its volume, and the user
gets the capacity refusal (with the other types) and may simply start again later. Step 3:
both copies exist; the server runs on the new one, and each removal that failed is an audit
line (``keep_volume``) naming what is left, for an admin (the reaper removes a stopped
instance after the community's dormancy, snapshot first). The root volume is not moved: it
holds the image and the bootstrap, which the new instance gets from the AMI as any launch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .aws import Aws, AwsError, ErrorKind
from .poller import InstanceView
from .removal import snapshot_tags

log = logging.getLogger(__name__)

#: Tag on the move's snapshot: what it is for (a reaper or an admin sees it is transient).
TAG_ZONE_MOVE = "jupyterhub:zone-move"

Sleep = Callable[[float], Awaitable[Any]]

#: How long a new snapshot may be unknown to DescribeSnapshots (EC2's eventual consistency).
VISIBILITY_SECONDS = 60.0


class MoveFailed(Exception):
    """A step of the move failed; the message says which, and that the files are safe."""


def move_snapshot_tags(view: InstanceView) -> list[dict[str, str]]:
    """The instance's tags (as a removal snapshot's) and `TAG_ZONE_MOVE` naming its zone."""
    *own, snapshot_of = snapshot_tags(view)  # at most EC2's 50, snapshot-of last
    zone = {"Key": TAG_ZONE_MOVE, "Value": view.availability_zone or "unknown"}
    return [*own[:48], snapshot_of, zone]


async def snapshot_home(
    aws: Aws,
    view: InstanceView,
    volume_id: str,
    *,
    progress: Callable[[str], None],
    timeout: float = 3600.0,
    interval: float = 5.0,
    sleep: Sleep = asyncio.sleep,
) -> tuple[str, int]:
    """Step 1: the snapshot's id and size (GiB) once ``completed``. Raises `MoveFailed`
    (after deleting a snapshot that was made) when EC2 refuses, the snapshot fails or takes
    longer than ``timeout``; cancelled, it deletes the snapshot too."""
    try:
        answer = await aws.call(
            "ec2",
            "create_snapshot",
            VolumeId=volume_id,
            Description=f"Zone move of {view.instance_id} from {view.availability_zone}",
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": move_snapshot_tags(view)}],
        )
    except AwsError as e:
        raise MoveFailed(f"CreateSnapshot of {volume_id} failed ({e.code})") from e
    snapshot_id = str(answer["SnapshotId"])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    unseen_until = loop.time() + VISIBILITY_SECONDS
    try:
        while True:
            state, snapshot = await _snapshot_state(aws, snapshot_id)
            if state == "missing" and loop.time() < unseen_until:
                state = "pending"  # EC2 is eventually consistent: a new id may not show yet
            if state == "completed":
                return snapshot_id, int(snapshot.get("VolumeSize") or 0)
            if state not in ("pending",):
                raise MoveFailed(f"snapshot {snapshot_id} of {volume_id} is {state!r}")
            if loop.time() >= deadline:
                raise MoveFailed(f"snapshot {snapshot_id} not completed in {timeout:.0f}s")
            progress(f"Copying your home volume: {snapshot.get('Progress') or '0%'}…")
            await sleep(interval)
    except AwsError as e:
        await discard_snapshot(aws, snapshot_id)
        raise MoveFailed(f"DescribeSnapshots of {snapshot_id} failed ({e.code})") from e
    except MoveFailed:
        await discard_snapshot(aws, snapshot_id)
        raise
    except asyncio.CancelledError:  # the start gave up (start_timeout): leave nothing
        await asyncio.shield(discard_snapshot(aws, snapshot_id))
        raise


async def _snapshot_state(aws: Aws, snapshot_id: str) -> tuple[str, dict[str, Any]]:
    try:
        found = await aws.call("ec2", "describe_snapshots", SnapshotIds=[snapshot_id])
    except AwsError as e:
        if e.code == "InvalidSnapshot.NotFound":
            return "missing", {}
        raise
    snapshot = next(iter(found.get("Snapshots", [])), {})
    return str(snapshot.get("State", "missing")), snapshot


async def discard_snapshot(aws: Aws, snapshot_id: str) -> bool:
    """Delete the move's snapshot (best effort: a leftover one costs, loses nothing)."""
    try:
        await aws.call("ec2", "delete_snapshot", SnapshotId=snapshot_id)
    except AwsError as e:
        if e.kind is ErrorKind.NOT_FOUND or e.code.startswith("InvalidSnapshot.NotFound"):
            return True
        log.warning("zone move: could not delete snapshot %s: %s", snapshot_id, e)
        return False
    return True


async def retire_old(
    aws: Aws,
    old_instance_id: str,
    old_volume_id: str,
    snapshot_id: str,
    *,
    timeout: float = 600.0,
    interval: float = 5.0,
    sleep: Sleep = asyncio.sleep,
) -> list[tuple[str, str]]:
    """Step 3, after the new instance runs with its home volume: terminate the old instance,
    delete its home volume once detached, delete the snapshot. Never raises: returns
    ``(action, what)`` for each step done, and ``("keep_volume", why)`` for each left."""
    done: list[tuple[str, str]] = []
    try:
        await aws.call("ec2", "terminate_instances", InstanceIds=[old_instance_id])
        done.append(("terminate", old_instance_id))
    except AwsError as e:
        why = f"TerminateInstances of {old_instance_id} failed ({e.code}); it stays stopped"
        return [("keep_volume", why)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            found = await aws.call("ec2", "describe_volumes", VolumeIds=[old_volume_id])
        except AwsError as e:
            if e.code == "InvalidVolume.NotFound":  # deleted with the instance
                done.append(("delete_volume", old_volume_id))
                break
            done.append(("keep_volume", f"DescribeVolumes of {old_volume_id} failed ({e.code})"))
            return done
        volume = next(iter(found.get("Volumes", [])), {})
        state = volume.get("State", "deleted")
        if state in ("deleted", "deleting"):
            done.append(("delete_volume", old_volume_id))
            break
        if state == "available":
            try:
                await aws.call("ec2", "delete_volume", VolumeId=old_volume_id)
                done.append(("delete_volume", old_volume_id))
            except AwsError as e:
                done.append(("keep_volume", f"DeleteVolume of {old_volume_id} failed ({e.code})"))
                return done
            break
        if loop.time() >= deadline:
            done.append(("keep_volume", f"{old_volume_id} still {state!r} after {timeout:.0f}s"))
            return done
        await sleep(interval)
    if await discard_snapshot(aws, snapshot_id):
        done.append(("delete_snapshot", snapshot_id))
    return done
