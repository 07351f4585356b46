"""The dormancy reaper: terminate instances stopped for longer than their community allows.

A stopped instance costs only its volumes, but volumes of servers nobody returns to add up.
``snh reap`` (run it daily: a cron job, a systemd timer or a scheduled task with
the hub's IAM role) looks at every *stopped* instance tagged ``jupyterhub:hub=<hub id>``; one
stopped for longer than its community's ``dormancy_days`` (community from the
``jupyterhub:community`` tag; 30 days when the tag names no community of the file) is
removed with `snapshot_then_terminate`, the same function the spawner uses when a named server
or a user is deleted. ``--dry-run`` lists what it would do and changes nothing.

**Stopped since** is EC2's own time of the stop (``StateTransitionReason``, "User initiated
(… GMT)", `spawner.poller.InstanceView.state_since`). When EC2 gives none, the time of the
audit log's last ``stop``/``stopped`` line of the instance is used (if no start followed it);
with neither, the instance is left alone and reported: never remove what cannot be dated.

Every action is an audit line (`operations.audit`), actor ``reaper`` here, or whoever deletes
the server on the delete path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hub_config.communities import BUILTIN_DEFAULTS, CommunitiesConfig, Community
from spawner.aws import Aws, AwsError
from spawner.naming import DEFAULT_SERVER_TAG, TAG_COMMUNITY, TAG_HUB, TAG_SERVER, TAG_USER
from spawner.poller import InstanceView
from spawner.removal import (
    RemovalError,
    RemovalResult,
    delete_volumes_after_snapshots,
    snapshot_then_terminate,
)

from . import audit
from .audit import AuditLog

log = logging.getLogger(__name__)

DEFAULT_DORMANCY_DAYS: int = BUILTIN_DEFAULTS["dormancy_days"]


@dataclass(frozen=True)
class Policy:
    """What the reaper applies to one instance."""

    dormancy_days: int
    snapshot_before_delete: bool


def policy_for(community: Community | None) -> Policy:
    if community is None:
        return Policy(DEFAULT_DORMANCY_DAYS, bool(BUILTIN_DEFAULTS["snapshot_before_delete"]))
    return Policy(community.dormancy_days, community.volume_policy.snapshot_before_delete)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def removal_date(
    view: InstanceView, community: Community | None, *, stopped_at: dt.datetime | None = None
) -> dt.datetime | None:
    """When the reaper may remove this instance: stopped since + the community's
    ``dormancy_days``; None unless it is stopped with a known stop time (``stopped_at``
    overrides EC2's, e.g. from the audit log). For "stopped since …, will be removed on …"."""
    if view.state != "stopped":
        return None
    since = stopped_at or view.state_since
    if since is None:
        return None
    return _utc(since) + dt.timedelta(days=policy_for(community).dormancy_days)


def last_stop_times(records: Iterable[Mapping[str, Any]]) -> dict[str, dt.datetime]:
    """Per instance, the time of its last ``stop``/``stopped`` audit line, if no ``launch``,
    ``resume`` or ``adopt`` line came after it (the fallback when EC2 gives no stop time)."""
    latest: dict[str, tuple[dt.datetime, bool]] = {}
    for record in records:
        instance_id = record.get("instance_id")
        action = record.get("action")
        if not isinstance(instance_id, str) or record.get("dry_run"):
            continue
        if record.get("outcome") not in (None, "ok"):
            continue
        if action in ("stop", "stopped"):
            is_stop = True
        elif action in ("launch", "resume", "adopt"):
            is_stop = False
        else:
            continue
        try:
            when = audit.parse_time(str(record.get("time")))
        except ValueError:
            continue
        if instance_id not in latest or when >= latest[instance_id][0]:
            latest[instance_id] = (when, is_stop)
    return {i: when for i, (when, is_stop) in latest.items() if is_stop}


# ------------------------------------------------------------------------------------------
# The plan (pure)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the reaper does with one stopped instance, and why."""

    view: InstanceView
    community_id: str | None
    policy: Policy
    stopped_since: dt.datetime | None
    removal_date: dt.datetime | None
    #: "remove" (snapshot per policy, then terminate), "keep" (not due), "skip" (undatable)
    action: str
    reason: str

    @property
    def user(self) -> str:
        return self.view.tags.get(TAG_USER, "")

    @property
    def server(self) -> str:
        server = self.view.tags.get(TAG_SERVER, "")
        return "" if server == DEFAULT_SERVER_TAG else server

    def describe_action(self) -> str:
        if self.action != "remove":
            return f"{self.action}: {self.reason}" if self.reason else self.action
        if self.policy.snapshot_before_delete:
            return "snapshot home volume, terminate"
        return "terminate (no snapshot: volume_policy.snapshot_before_delete is false)"


def plan(
    views: Iterable[InstanceView],
    communities: CommunitiesConfig | None,
    now: dt.datetime,
    *,
    stop_times: Mapping[str, dt.datetime] | None = None,
) -> list[Plan]:
    """The reaper's decision for every stopped instance in ``views``, oldest stop first.
    ``stop_times``: per instance, when it stopped if EC2 does not say (`last_stop_times`)."""
    now = _utc(now)
    plans = []
    for view in views:
        if view.state != "stopped":
            continue
        community_id = view.tags.get(TAG_COMMUNITY) or None
        community = communities.by_id(community_id) if communities and community_id else None
        policy = policy_for(community)
        since = view.state_since or (stop_times or {}).get(view.instance_id)
        if since is None:
            plans.append(Plan(view, community_id, policy, None, None, "skip", "stop time unknown"))
            continue
        since = _utc(since)
        due = since + dt.timedelta(days=policy.dormancy_days)
        if community is not None:
            note = ""
        elif community_id:
            note = f"; community {community_id!r} not in the communities file: "
            note += f"{DEFAULT_DORMANCY_DAYS} days"
        else:
            note = f"; no community tag: {DEFAULT_DORMANCY_DAYS} days"
        if now >= due:
            reason = f"stopped {(now - since).days} days, longer than {policy.dormancy_days}"
            action = "remove"
        else:
            reason, action = f"until {due:%Y-%m-%d %H:%M} UTC", "keep"
        plans.append(Plan(view, community_id, policy, since, due, action, reason + note))
    plans.sort(key=lambda p: p.stopped_since or now)
    return plans


@dataclass
class Outcome:
    plan: Plan
    result: RemovalResult | None = None
    error: str | None = None

    @property
    def done(self) -> str:
        if self.error:
            return f"FAILED: {self.error}"
        if self.result is None:
            return self.plan.describe_action()
        if self.result.skipped:
            return f"skipped: {self.result.skipped}"
        return f"terminated; home volume {self.result.volume_fate}"


@dataclass
class ReapReport:
    outcomes: list[Outcome] = field(default_factory=list)
    volumes: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not any(o.error for o in self.outcomes)


class Reaper:
    """One pass over the hub's stopped instances in ``regions`` (see the module docstring)."""

    def __init__(
        self,
        aws_for: Callable[[str], Aws],
        hub_id: str,
        regions: Iterable[str],
        communities: CommunitiesConfig | None,
        *,
        audit_log: AuditLog | None = None,
        now: Callable[[], dt.datetime] = audit.utcnow,
        dry_run: bool = False,
        wait_for_snapshot: float = 300.0,
        concurrency: int = 4,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.aws_for = aws_for
        self.hub_id = hub_id
        self.regions = sorted(set(regions))
        self.communities = communities
        self.audit_log = audit_log or audit.get_audit_log()
        self.now = now
        self.dry_run = dry_run
        self.wait_for_snapshot = wait_for_snapshot
        self.concurrency = concurrency
        self.sleep = sleep

    async def stopped_instances(self, region: str) -> list[InstanceView]:
        pages = await self.aws_for(region).paginate(
            "ec2",
            "describe_instances",
            Filters=[
                {"Name": f"tag:{TAG_HUB}", "Values": [self.hub_id]},
                {"Name": "instance-state-name", "Values": ["stopped"]},
            ],
        )
        return [
            InstanceView.from_api(raw)
            for page in pages
            for reservation in page.get("Reservations", [])
            for raw in reservation.get("Instances", [])
        ]

    async def plans(self) -> tuple[dict[str, list[Plan]], list[str]]:
        """Per region, the plan of every stopped instance; and the regions that failed."""
        stop_times = last_stop_times(self.audit_log.read())
        by_region: dict[str, list[Plan]] = {}
        errors = []
        for region in self.regions:
            try:
                views = await self.stopped_instances(region)
            except AwsError as e:
                errors.append(f"{region}: {e}")
                continue
            by_region[region] = plan(views, self.communities, self.now(), stop_times=stop_times)
        return by_region, errors

    async def run(self) -> ReapReport:
        report = ReapReport()
        by_region, report.errors = await self.plans()
        limit = asyncio.Semaphore(self.concurrency)

        async def remove(region: str, item: Plan) -> Outcome:
            outcome = Outcome(item)
            if item.action != "remove" or self.dry_run:
                return outcome
            community = (
                self.communities.by_id(item.community_id)
                if (self.communities and item.community_id)
                else None
            )
            async with limit:
                try:
                    outcome.result = await snapshot_then_terminate(
                        self.aws_for(region),
                        item.view,
                        community,
                        audit.REAPER,
                        f"dormant: {item.reason}",
                        audit_log=self.audit_log,
                        require_stopped=True,
                        wait_for_snapshot=self.wait_for_snapshot,
                        sleep=self.sleep,
                    )
                except (AwsError, RemovalError) as e:
                    outcome.error = str(e)
                    log.error("reaper: %s: %s", item.view.instance_id, e)
            return outcome

        tasks = [remove(region, item) for region, items in by_region.items() for item in items]
        report.outcomes = list(await asyncio.gather(*tasks))
        for region in by_region:
            try:
                report.volumes.extend(
                    await delete_volumes_after_snapshots(
                        self.aws_for(region),
                        self.hub_id,
                        audit_log=self.audit_log,
                        dry_run=self.dry_run,
                    )
                )
            except AwsError as e:
                report.errors.append(f"{region}: volumes: {e}")
        return report
