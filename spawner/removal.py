"""Removing a server's instance for good: snapshot the home volume, then terminate.

Used by the spawner when a named server or a user is deleted (`EC2Spawner.delete_forever`)
and by the dormancy reaper (`operations.reaper`) for instances stopped too long: one
implementation of the steps where a mistake loses someone's files.

**Snapshot, then terminate** (`snapshot_then_terminate`), when the community's
``volume_policy.snapshot_before_delete`` says so:

1. the instance is described again: it must (still) be stopped — a running one is stopped
   first on the delete path; the reaper skips it (the user came back);
2. ``CreateSnapshot`` of the home volume, tagged with the instance's tags plus
   ``jupyterhub:snapshot-of=<instance id>`` (an existing snapshot of the same stop, from an
   interrupted earlier run, is reused);
3. *consistency* needs no more than the snapshot existing (state ``pending``): an EBS
   snapshot holds the volume's blocks as they were when it was requested, whatever is written
   later, and the instance is stopped, so no cache holds unwritten data. *Durability* is
   another matter: a pending snapshot can still end in ``error``, and terminating deletes a
   volume with ``DeleteOnTermination``. So, if the snapshot is not ``completed`` by then
   (``wait_for_snapshot`` seconds; the reaper waits a few minutes, the delete path not at
   all), the volume's ``DeleteOnTermination`` is turned off and the volume tagged
   ``jupyterhub:delete-after-snapshot=<snapshot id>``: it outlives the instance, and
   `delete_volumes_after_snapshots` (every reaper run) deletes it once the snapshot is
   ``completed`` — or keeps it, and says so, if the snapshot failed;
4. ``TerminateInstances``. A home volume whose ``DeleteOnTermination`` is false (community
   ``volume_policy.delete_on_termination: false``) is left behind, still billed, and the
   audit line says so (``keep_volume``).

Every action is an audit line (`operations.audit`), actor ``reaper`` for the reaper, or
whoever deletes the server on the delete path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hub_config.communities import BUILTIN_DEFAULTS, Community
from operations import audit
from operations.audit import Actor, AuditLog

from .aws import Aws, AwsError, ErrorKind
from .naming import (
    DEFAULT_SERVER_TAG,
    HOME_DEVICE,
    MAX_TAGS_PER_RESOURCE,
    TAG_COMMUNITY,
    TAG_DELETE_AFTER_SNAPSHOT,
    TAG_HUB,
    TAG_SERVER,
    TAG_SNAPSHOT_OF,
    TAG_USER,
)
from .poller import InstanceView

log = logging.getLogger(__name__)

#: The tag value of a volume whose snapshot failed: kept, and said so, never deleted.
_FAILED = "failed:"


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class RemovalError(Exception):
    """The instance could not be removed safely (the message says why; nothing was lost)."""


@dataclass
class RemovalResult:
    instance_id: str
    terminated: bool = False
    snapshot_id: str | None = None
    snapshot_state: str | None = None
    volume_id: str | None = None
    #: what happens to the home volume, in words
    volume_fate: str = "no home volume"
    #: set when nothing was done (e.g. the instance is running again)
    skipped: str | None = None
    actions: list[str] = field(default_factory=list)


def snapshot_tags(view: InstanceView) -> list[dict[str, str]]:
    """The instance's tags (``aws:`` ones left out: they cannot be set) plus
    ``jupyterhub:snapshot-of``, the hub's own first, at most EC2's 50."""
    own = [
        (k, v)
        for k, v in view.tags.items()
        if not k.casefold().startswith("aws:") and k != TAG_SNAPSHOT_OF
    ]
    own.sort(key=lambda kv: 0 if kv[0].startswith(("jupyterhub:", "synapse:")) else 1)
    tags = [{"Key": k, "Value": v} for k, v in own[: MAX_TAGS_PER_RESOURCE - 1]]
    tags.append({"Key": TAG_SNAPSHOT_OF, "Value": view.instance_id})
    return tags


def _description(text: str) -> str:
    """Printable ASCII, at most 255 characters (EC2's limit for a snapshot description)."""
    return "".join(ch if " " <= ch <= "~" else "_" for ch in text)[:255]


async def _describe(aws: Aws, instance_id: str) -> dict[str, Any] | None:
    try:
        answer = await aws.call("ec2", "describe_instances", InstanceIds=[instance_id])
    except AwsError as e:
        if e.kind is ErrorKind.NOT_FOUND:
            return None
        raise
    found = [i for r in answer.get("Reservations", []) for i in r.get("Instances", [])]
    return found[0] if found else None


def _home_mapping(raw: Mapping[str, Any]) -> tuple[str | None, bool]:
    for mapping in raw.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") == HOME_DEVICE and "Ebs" in mapping:
            ebs = mapping["Ebs"]
            return ebs.get("VolumeId"), bool(ebs.get("DeleteOnTermination", False))
    return None, False


async def _wait_state(
    aws: Aws,
    instance_id: str,
    wanted: str,
    timeout: float,
    interval: float,
    sleep: Callable[[float], Any],
) -> dict[str, Any] | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        raw = await _describe(aws, instance_id)
        if raw is None or raw["State"]["Name"] in (wanted, "terminated"):
            return raw
        if loop.time() >= deadline:
            raise RemovalError(
                f"{instance_id} did not reach {wanted!r} in {timeout:.0f}s "
                f"(it is {raw['State']['Name']!r})"
            )
        await sleep(interval)


async def _existing_snapshot(
    aws: Aws, instance_id: str, volume_id: str, since: dt.datetime | None
) -> dict[str, Any] | None:
    """A snapshot of this volume taken for this instance's removal after its last stop."""
    if since is None:
        return None
    answer = await aws.call(
        "ec2",
        "describe_snapshots",
        OwnerIds=["self"],
        Filters=[
            {"Name": "volume-id", "Values": [volume_id]},
            {"Name": f"tag:{TAG_SNAPSHOT_OF}", "Values": [instance_id]},
        ],
    )
    usable = [
        s
        for s in answer.get("Snapshots", [])
        if s.get("State") in ("pending", "completed")
        and s.get("StartTime") is not None
        and _utc(s["StartTime"]) >= _utc(since)
    ]
    usable.sort(key=lambda s: s["StartTime"], reverse=True)
    return usable[0] if usable else None


async def _snapshot_state(aws: Aws, snapshot_id: str) -> str:
    try:
        answer = await aws.call("ec2", "describe_snapshots", SnapshotIds=[snapshot_id])
    except AwsError as e:
        if e.code.startswith("InvalidSnapshot"):
            return "missing"
        raise
    snapshots = answer.get("Snapshots", [])
    return str(snapshots[0].get("State", "unknown")) if snapshots else "missing"


async def snapshot_then_terminate(
    aws: Aws,
    view: InstanceView | str,
    community: Community | None,
    actor: Actor | str,
    reason: str,
    *,
    audit_log: AuditLog | None = None,
    require_stopped: bool = False,
    wait_for_snapshot: float = 0.0,
    stop_timeout: float = 600.0,
    poll_interval: float = 5.0,
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> RemovalResult:
    """Remove a server's instance: snapshot the home volume first if the community's
    ``volume_policy.snapshot_before_delete`` says so, then terminate (see the module
    docstring for the order and why). ``view``: the instance as the poller saw it, or just
    its id (it is described here either way). ``community`` None applies the built-in policy.

    ``require_stopped`` (the reaper): leave an instance that is no longer stopped alone and
    say so in ``skipped``. Otherwise (deleting a server) a running or stopping instance is
    stopped and waited for (``stop_timeout``), so the snapshot holds what was on disk.
    ``wait_for_snapshot``: seconds to wait for the snapshot to complete before the volume's
    deletion is deferred instead. Raises `RemovalError` when removing would lose data (the
    snapshot failed) or the instance does not stop, `AwsError` when AWS refuses a step;
    each step that happened has its audit line.
    """
    snapshot_first = (
        community.volume_policy.snapshot_before_delete
        if community is not None
        else bool(BUILTIN_DEFAULTS["snapshot_before_delete"])
    )
    raw = await _describe(aws, view if isinstance(view, str) else view.instance_id)
    if isinstance(view, str):
        if raw is None:
            return RemovalResult(view, terminated=True, skipped="no such instance")
        view = InstanceView.from_api(raw)
    removal = _Removal(
        aws,
        view,
        who=actor if isinstance(actor, Actor) else Actor(actor),
        record=(audit_log or audit.get_audit_log()).record,
        reason=reason,
        poll_interval=poll_interval,
        sleep=sleep,
    )
    raw = await removal.stopped(raw, require_stopped=require_stopped, timeout=stop_timeout)
    if raw is None:
        return removal.result
    volume_id, deletes_with_instance = _home_mapping(raw)
    removal.result.volume_id = volume_id
    if volume_id and snapshot_first:
        stopped_at = InstanceView.from_api(raw).state_since
        await removal.snapshot(volume_id, stopped_at, wait=wait_for_snapshot)
    if volume_id:
        await removal.settle_volume(volume_id, deletes_with_instance)
    await removal.terminate(volume_id, deletes_with_instance)
    return removal.result


class _Removal:
    """The steps of one `snapshot_then_terminate`, in order, each with its audit line."""

    def __init__(
        self,
        aws: Aws,
        view: InstanceView,
        *,
        who: Actor,
        record: Callable[..., Any],
        reason: str,
        poll_interval: float,
        sleep: Callable[[float], Any],
    ) -> None:
        self.aws, self.view, self.who, self.record = aws, view, who, record
        self.reason, self.poll_interval, self.sleep = reason, poll_interval, sleep
        self.base = {**audit.view_fields(view), "region": aws.region, "reason": reason}
        self.result = RemovalResult(view.instance_id)

    async def stopped(
        self, raw: dict[str, Any] | None, *, require_stopped: bool, timeout: float
    ) -> dict[str, Any] | None:
        """The instance, stopped (stopping it first unless ``require_stopped``); None when
        there is nothing to remove (``result`` says why)."""
        view, result, reason = self.view, self.result, self.reason
        state = raw["State"]["Name"] if raw else "terminated"
        if state in ("terminated", "shutting-down"):
            result.terminated = True
            result.skipped = f"already {state}"
            return None
        if state != "stopped" and require_stopped:
            result.skipped = f"it is {state} now"
            self.record(
                "skip",
                self.who,
                **{**self.base, "state": state, "reason": f"{reason}; {state} now"},
            )
            return None
        if state in ("pending", "running"):
            await self.aws.call("ec2", "stop_instances", InstanceIds=[view.instance_id])
            self.record(
                "stop",
                self.who,
                **{**self.base, "previous_state": state, "reason": f"{reason}: stop first"},
            )
            result.actions.append("stop")
        if state != "stopped":
            raw = await _wait_state(
                self.aws, view.instance_id, "stopped", timeout, self.poll_interval, self.sleep
            )
            if raw is None or raw["State"]["Name"] == "terminated":
                result.terminated = True
                result.skipped = "terminated meanwhile"
                return None
        assert raw is not None
        stopped_at = InstanceView.from_api(raw).state_since
        if (
            require_stopped
            and view.state_since is not None
            and stopped_at is not None
            and stopped_at > view.state_since
        ):
            result.skipped = f"started and stopped again since (at {stopped_at:%Y-%m-%d %H:%M} UTC)"
            self.record(
                "skip", self.who, **{**self.base, "state": "stopped", "reason": result.skipped}
            )
            return None
        return raw

    async def snapshot(
        self, volume_id: str, stopped_at: dt.datetime | None, *, wait: float
    ) -> None:
        """Snapshot the home volume (or reuse the one an interrupted earlier attempt took
        after the latest stop), and wait up to ``wait`` seconds for it to complete; raise
        `RemovalError`, terminating nothing, if it failed."""
        view, result = self.view, self.result
        snapshot = await _existing_snapshot(self.aws, view.instance_id, volume_id, stopped_at)
        if snapshot is None:
            user = view.tags.get(TAG_USER, "?")
            server = view.tags.get(TAG_SERVER, DEFAULT_SERVER_TAG)
            snapshot = await self.aws.call(
                "ec2",
                "create_snapshot",
                VolumeId=volume_id,
                Description=_description(
                    f"Home volume of {user}/{server} ({view.instance_id}) before: {self.reason}"
                ),
                TagSpecifications=[{"ResourceType": "snapshot", "Tags": snapshot_tags(view)}],
            )
            result.actions.append("snapshot")
            self.record(
                "snapshot",
                self.who,
                **self.base,
                volume_id=volume_id,
                snapshot_id=snapshot["SnapshotId"],
                snapshot_state=snapshot.get("State"),
            )
        result.snapshot_id = snapshot["SnapshotId"]
        result.snapshot_state = str(snapshot.get("State", "pending"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while result.snapshot_state == "pending" and loop.time() < deadline:
            await self.sleep(min(self.poll_interval, max(0.0, deadline - loop.time())))
            result.snapshot_state = await _snapshot_state(self.aws, result.snapshot_id)
        if result.snapshot_state not in ("pending", "completed"):
            message = (
                f"snapshot {result.snapshot_id} of {volume_id} is {result.snapshot_state}: "
                f"{view.instance_id} not terminated, nothing deleted"
            )
            self.record(
                "terminate",
                self.who,
                **self.base,
                outcome="failed",
                error=message,
                volume_id=volume_id,
                snapshot_id=result.snapshot_id,
            )
            raise RemovalError(message)

    async def settle_volume(self, volume_id: str, deletes_with_instance: bool) -> None:
        """What becomes of the home volume: kept (the community's policy), kept until its
        pending snapshot completes, or deleted with the instance."""
        result = self.result
        if not deletes_with_instance:
            result.volume_fate = (
                f"kept: DeleteOnTermination is false (volume_policy.delete_on_termination); "
                f"{volume_id} stays, and is billed, until someone deletes it"
            )
        elif result.snapshot_state == "pending":
            await self.aws.call(
                "ec2",
                "modify_instance_attribute",
                InstanceId=self.view.instance_id,
                BlockDeviceMappings=[
                    {"DeviceName": HOME_DEVICE, "Ebs": {"DeleteOnTermination": False}}
                ],
            )
            await self.aws.call(
                "ec2",
                "create_tags",
                Resources=[volume_id],
                Tags=[
                    {"Key": TAG_DELETE_AFTER_SNAPSHOT, "Value": result.snapshot_id or ""},
                    {"Key": TAG_HUB, "Value": self.view.tags.get(TAG_HUB, "")},
                ],
            )
            result.volume_fate = (
                f"kept until snapshot {result.snapshot_id} completes, then deleted by the reaper"
            )
        else:
            result.volume_fate = "deleted with the instance" + (
                f" (snapshot {result.snapshot_id})"
                if result.snapshot_id
                else " (no snapshot: volume_policy.snapshot_before_delete is false)"
            )

    async def terminate(self, volume_id: str | None, deletes_with_instance: bool) -> None:
        result = self.result
        await self.aws.call("ec2", "terminate_instances", InstanceIds=[self.view.instance_id])
        result.terminated = True
        result.actions.append("terminate")
        self.record(
            "terminate",
            self.who,
            **{**self.base, "state": "shutting-down"},
            previous_state="stopped",
            volume_id=volume_id,
            snapshot_id=result.snapshot_id,
            snapshot_state=result.snapshot_state,
            volume_fate=result.volume_fate,
        )
        if volume_id and (not deletes_with_instance or result.snapshot_state == "pending"):
            self.record(
                "keep_volume",
                self.who,
                **self.base,
                volume_id=volume_id,
                snapshot_id=result.snapshot_id,
                volume_fate=result.volume_fate,
            )


async def delete_volumes_after_snapshots(
    aws: Aws,
    hub_id: str,
    *,
    actor: Actor | str = audit.REAPER,
    audit_log: AuditLog | None = None,
    dry_run: bool = False,
) -> list[tuple[str, str]]:
    """Delete home volumes kept only until their snapshot completed (see the module
    docstring). Returns (volume id, what was done) for each such volume."""
    # Long: one pass over the kept volumes, with every outcome reported and audited.
    record = (audit_log or audit.get_audit_log()).record
    who = actor if isinstance(actor, Actor) else Actor(actor)
    pages = await aws.paginate(
        "ec2",
        "describe_volumes",
        Filters=[
            {"Name": f"tag:{TAG_HUB}", "Values": [hub_id]},
            {"Name": "tag-key", "Values": [TAG_DELETE_AFTER_SNAPSHOT]},
            {"Name": "status", "Values": ["available"]},
        ],
    )
    done: list[tuple[str, str]] = []
    for page in pages:
        for volume in page.get("Volumes", []):
            volume_id = volume["VolumeId"]
            tags = {t["Key"]: t["Value"] for t in volume.get("Tags", [])}
            snapshot_id = tags.get(TAG_DELETE_AFTER_SNAPSHOT, "")
            if snapshot_id.startswith(_FAILED):
                continue  # reported once already; an operator decides
            fields = {
                "volume_id": volume_id,
                "snapshot_id": snapshot_id or None,
                "user": tags.get(TAG_USER),
                "server": tags.get(TAG_SERVER),
                "community": tags.get(TAG_COMMUNITY),
                "region": aws.region,
                "hub_id": hub_id,
            }
            state = await _snapshot_state(aws, snapshot_id) if snapshot_id else "missing"
            if state == "pending":
                done.append((volume_id, f"waiting for snapshot {snapshot_id}"))
                continue
            if state == "completed":
                if dry_run:
                    done.append((volume_id, f"would delete (snapshot {snapshot_id} completed)"))
                    continue
                try:
                    await aws.call("ec2", "delete_volume", VolumeId=volume_id)
                except AwsError as e:
                    if e.kind is not ErrorKind.NOT_FOUND:
                        record("delete_volume", who, **fields, outcome="failed", error=str(e))
                        done.append((volume_id, f"delete failed: {e}"))
                        continue
                record(
                    "delete_volume",
                    who,
                    **fields,
                    reason="its snapshot completed",
                    volume_fate="deleted",
                )
                done.append((volume_id, "deleted"))
                continue
            message = f"snapshot {snapshot_id or '?'} is {state}: volume kept, not deleted"
            if dry_run:
                done.append((volume_id, message))
                continue
            await aws.call(
                "ec2",
                "create_tags",
                Resources=[volume_id],
                Tags=[{"Key": TAG_DELETE_AFTER_SNAPSHOT, "Value": f"{_FAILED}{snapshot_id}"}],
            )
            record(
                "keep_volume",
                who,
                **fields,
                outcome="failed",
                error=message,
                volume_fate="kept: its snapshot failed; check it and delete it by hand",
            )
            log.error("%s: %s", volume_id, message)
            done.append((volume_id, message))
    return done


# ------------------------------------------------------------------------------------------
# The reaper
# ------------------------------------------------------------------------------------------
