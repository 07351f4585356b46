"""One `DescribeInstances` per interval for every server of the hub.

JupyterHub polls every spawner every 30 s; one describe call per user would grow with the hub
and trip EC2's API throttling. Instead one poller per region asks for all instances tagged
with the hub's id (paginated) and every spawner reads its own instance from the result — the
role kubespawner's reflector plays for pods. While a spawn waits for a state the poller runs
at a faster interval, still one call for everybody.

While spawns wait and the last look at every instance is recent, the poller asks only for
the instances they wait for (an ``instance-id`` filter, at most ``IDS_PER_CALL`` a call): with
5,000 servers a look at all of them is five pages, and a start after another would otherwise
make one every ``fast_interval``. The look at every instance still comes every ``interval``.

A look at every instance costs one call per page, and EC2's API rate is shared by everything
in the account: with ``pages_per_minute`` the poller spaces its full looks so that they spend at
most that many calls a minute (5,000 servers, five pages: a look every 200 s at 1.5 a minute),
never more often than ``interval``. What is "recent" (``fresh``) stretches with it.

The poller distinguishes *unknown* from *absent*: until a describe has succeeded recently, a
spawner must not conclude that its instance is gone (an AWS error is not "stopped").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from operations import metrics

from .aws import Aws, AwsError, ErrorKind
from .naming import hub_filter, sanitize_tag_value

log = logging.getLogger(__name__)

#: EC2's largest page of DescribeInstances (MaxResults 5-1000; each page is one call against
#: the API's rate limit): 500 servers are one call per interval, not five of 100.
PAGE_SIZE = 1000
#: EC2 answers ``FilterLimitExceeded`` for more than 200 values in the filters of one call
#: (all filters together): instance ids go 199 a call, beside the hub's tag.
FILTER_VALUES = 200
IDS_PER_CALL = FILTER_VALUES - 1
#: DescribeInstances pages a minute for the looks at every instance, by default: within EC2's
#: rate and issue 15's 2 a minute in total, with room for the hub's other looks.
DEFAULT_PAGES_PER_MINUTE = 1.5

# EC2 writes "GMT"; moto >= 5.1 writes "UTC"
_TRANSITION_TIME = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


#: What `InstancePoller.get` answers while it cannot vouch for the state of the world.
UNKNOWN: Any = _Unknown()


@dataclass(frozen=True)
class InstanceView:
    """What the hub needs to know of one instance, from one describe."""

    instance_id: str
    state: str
    instance_type: str
    tags: dict[str, str] = field(hash=False)
    launch_time: dt.datetime | None = None
    subnet_id: str = ""
    availability_zone: str = ""
    #: block device name -> volume id
    volumes: dict[str, str] = field(default_factory=dict, hash=False)
    state_reason: str = ""
    #: when the state last changed, if EC2 says (it does for user-initiated stops)
    state_since: dt.datetime | None = None

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> InstanceView:
        transition = _TRANSITION_TIME.search(raw.get("StateTransitionReason") or "")
        return cls(
            instance_id=raw["InstanceId"],
            state=raw["State"]["Name"],
            instance_type=raw.get("InstanceType", ""),
            tags={t["Key"]: t["Value"] for t in raw.get("Tags", [])},
            launch_time=raw.get("LaunchTime"),
            subnet_id=raw.get("SubnetId", ""),
            availability_zone=raw.get("Placement", {}).get("AvailabilityZone", ""),
            volumes={
                b["DeviceName"]: b["Ebs"]["VolumeId"]
                for b in raw.get("BlockDeviceMappings", [])
                if "Ebs" in b
            },
            state_reason=(raw.get("StateReason") or {}).get("Message", ""),
            state_since=(
                dt.datetime.strptime(transition.group(1), "%Y-%m-%d %H:%M:%S").replace(
                    tzinfo=dt.UTC
                )
                if transition
                else None
            ),
        )


class InstancePoller:
    """The shared view of the hub's instances in one region; see the module docstring."""

    def __init__(
        self,
        aws: Aws,
        hub_id: str,
        *,
        interval: float = 40.0,
        fast_interval: float = 2.0,
        stale_after: float | None = None,
        pages_per_minute: float | None = None,
    ) -> None:
        if pages_per_minute is not None and pages_per_minute <= 0:
            raise ValueError("pages_per_minute must be positive (or None: no budget)")
        self.aws = aws
        self.hub_id = hub_id
        self.interval = interval
        self.fast_interval = fast_interval
        self.pages_per_minute = pages_per_minute
        self._stale_after = stale_after
        #: pages the last look at every instance took
        self.pages = 1
        self.instances: dict[str, InstanceView] = {}
        self.last_success: float | None = None
        self.last_error: AwsError | None = None
        self.describes = 0
        #: looks at some instances only (what waiting spawns wait for)
        self.targeted_describes = 0
        self._task: asyncio.Task[None] | None = None
        self._updated = asyncio.Condition()
        self._wake = asyncio.Event()
        self._waiters = 0
        self._watched: collections.Counter[str] = collections.Counter()  # what wait_for waits on
        self._kicked: set[str] = set()  # instances a spawn just changed
        self._full_kick = False  # a look at every instance is asked for
        self._refreshing: asyncio.Future[None] | None = None
        self._describing: asyncio.Future[None] | None = None  # the describe under way
        self._queued: asyncio.Future[None] | None = None  # the next one, shared
        self._began = False  # whether the describe under way has sent its request

    # -- running -------------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start the loop (or restart it, if it died): a supervisor in one line."""
        if self._task is None or self._task.done():
            if self._task is not None and not self._task.cancelled() and self._task.exception():
                log.error("Instance poller died, restarting: %r", self._task.exception())
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def kick(self, instance_id: str | None = None) -> None:
        """Describe now: ``instance_id`` (a spawn just changed it), or every instance."""
        if instance_id:
            self._kicked.add(instance_id)
        else:
            self._full_kick = True
        self._wake.set()

    @property
    def full_interval(self) -> float:
        """Seconds between looks at every instance: ``interval``, or longer when the last
        look's pages would spend more than ``pages_per_minute``."""
        if self.pages_per_minute is None:
            return self.interval
        return max(self.interval, 60.0 * self.pages / self.pages_per_minute)

    @property
    def stretch(self) -> float:
        """How many times ``interval`` the looks are apart (1 up to one page of instances):
        what the view's changes are slowed by, and what the spawners' own polls are spaced by
        (`EC2Spawner.poll`)."""
        return self.full_interval / self.interval if self.interval > 0 else 1.0

    @property
    def stale_after(self) -> float:
        """How old the last look at every instance may be and still vouch for the world:
        three missed looks and a little more, unless set."""
        if self._stale_after is not None:
            return self._stale_after
        return 3 * self.full_interval + 10

    def _until_full_look(self) -> float:
        """Seconds until the next look at every instance is due (0: now)."""
        if self._full_kick or self.last_success is None:
            return 0.0
        since = asyncio.get_running_loop().time() - self.last_success
        # a timer may fire a hair early: that is on time
        return max(0.0, self.full_interval * 0.99 - since)

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if self._until_full_look() == 0.0:
                    self._full_kick = False
                    self._kicked.clear()
                    await self.refresh()
                elif self._watched or self._kicked:
                    kicked, self._kicked = self._kicked, set()
                    try:
                        await self.refresh_some(set(self._watched) | kicked)
                    except AwsError:
                        self._kicked |= kicked  # asked for again at the next try
                        raise
                failures = 0
                due = self._until_full_look()
                delay = min(self.fast_interval, due) if self._waiters else due
            except AwsError as e:
                failures += 1
                self.last_error = e
                delay = min(self.interval * 4, self.fast_interval * 2**failures)
                delay *= 0.5 + random.random() / 2
                level = logging.WARNING if e.kind is ErrorKind.THROTTLED else logging.ERROR
                log.log(level, "DescribeInstances failed (%s); next try in %.0fs", e, delay)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def ensure_fresh(self) -> None:
        """A recent view, from one describe shared by every caller that asks at once (after a
        hub restart, every server's first poll arrives together)."""
        if self.fresh:
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self.refresh())
        await asyncio.shield(self._refreshing)

    async def refresh(self) -> None:
        """A describe that begins after this call. Callers arriving while one is under way
        share the next one: fifty spawns looking for their instances at once make two
        describes, not fifty (each lists every instance of the hub)."""
        if self._describing is None or self._describing.done():
            self._describing = _retrieved(asyncio.ensure_future(self._describe()))
            shared = self._describing
        elif not self._began:  # created in this loop iteration, not yet asking: join it
            shared = self._describing
        else:
            if self._queued is None:
                self._queued = _retrieved(asyncio.ensure_future(self._after(self._describing)))
            shared = self._queued
        await asyncio.shield(shared)

    async def refresh_some(self, instance_ids: Iterable[str]) -> None:
        """Look at these instances only (``IDS_PER_CALL`` a call); the view of the others
        stays as the last look at every instance left it, and so does ``fresh``."""
        ids = sorted(set(instance_ids))
        found: dict[str, InstanceView] = {}
        for first in range(0, len(ids), IDS_PER_CALL):
            found |= await describe_hub_instances(
                self.aws, self.hub_id, ids[first : first + IDS_PER_CALL]
            )
        self._merge(found)
        async with self._updated:
            self._updated.notify_all()

    async def lookup(self, **tags: str) -> list[InstanceView]:
        """The hub's instances with these tags, from a describe that begins now (tag names
        with ``:``: pass a dict via ``**``). A start that knows no instance id yet asks this
        way: one small call, not a look at every instance (five pages at 5,000 servers).

        The values are sanitised as the launch writes them (`sanitize_tag_value`), which also
        turns ``*`` and ``?``, wildcards in a filter, into ``_``; the answer is then checked
        for exact equality, since sanitising is not injective."""
        wanted = {key: sanitize_tag_value(value) for key, value in tags.items()}
        found = await describe_hub_instances(self.aws, self.hub_id, tags=wanted)
        found = {
            iid: view
            for iid, view in found.items()
            if all(view.tags.get(k) == v for k, v in wanted.items())
        }
        self._merge(found)
        return list(found.values())

    def _merge(self, found: dict[str, InstanceView]) -> None:
        """A targeted look's answer joins the view; the rest stays as the last full look."""
        self.targeted_describes += 1
        self.instances = {**self.instances, **found}

    async def _after(self, previous: asyncio.Future[None]) -> None:
        with contextlib.suppress(Exception):  # its error is for its own callers
            await previous
        self._queued = None
        if self._describing is previous:
            self._describing = _retrieved(asyncio.ensure_future(self._describe()))
        # else one began after ``previous`` ended, so after our callers called: share it
        assert self._describing is not None
        await self._describing

    async def _describe(self) -> None:
        self._began = True
        try:
            pages = await describe_pages(self.aws, self.hub_id)
        finally:
            self._began = False
        found = views_of(pages)
        self.describes += 1
        self.pages = max(1, len(pages))
        self.instances = found
        metrics.update_from_poller(found.values(), region=self.aws.region)
        self.last_success = asyncio.get_running_loop().time()
        self.last_error = None
        async with self._updated:
            self._updated.notify_all()

    # -- reading -------------------------------------------------------------------------

    @property
    def fresh(self) -> bool:
        if self.last_success is None:
            return False
        return asyncio.get_running_loop().time() - self.last_success < self.stale_after

    def get(self, instance_id: str) -> InstanceView | None:
        """The instance, None if a recent describe did not list it, `UNKNOWN` if not fresh."""
        if not self.fresh:
            return UNKNOWN
        return self.instances.get(instance_id)

    def find(self, **tags: str) -> list[InstanceView]:
        """Instances carrying all these tags (tag names with ``:``: pass a dict via ``**``)."""
        return [
            v for v in self.instances.values() if all(v.tags.get(k) == t for k, t in tags.items())
        ]

    async def wait_for(self, instance_id: str, states: Iterable[str]) -> InstanceView:
        """Wait until the instance is in one of ``states``, or in a state that cannot lead
        there: terminated, or stopped again after it was seen pending or running. (Right after
        StartInstances a describe may still say "stopped": that alone is not a dead end.)
        Bound it with ``asyncio.timeout``."""
        wanted = set(states)
        seen_moving = False
        self._waiters += 1
        self._watched[instance_id] += 1
        self.kick(instance_id)
        try:
            async with self._updated:
                while True:
                    view = self.instances.get(instance_id) if self.fresh else None
                    if view is not None:
                        if view.state in wanted or view.state in ("terminated", "shutting-down"):
                            return view
                        if view.state in ("pending", "running"):
                            seen_moving = True
                        elif seen_moving and view.state in ("stopping", "stopped"):
                            return view
                    await self._updated.wait()
        finally:
            self._waiters -= 1
            self._watched[instance_id] -= 1
            if self._watched[instance_id] <= 0:
                del self._watched[instance_id]


def _retrieved(future: asyncio.Future[None]) -> asyncio.Future[None]:
    """A shared describe whose callers all went away must not log "exception was never
    retrieved": its error was theirs, and the poller's loop logs its own."""
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


async def describe_hub_instances(
    aws: Aws,
    hub_id: str,
    instance_ids: Iterable[str] | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, InstanceView]:
    """The hub's instances (only ``instance_ids`` of them, or those with ``tags``, if given),
    by id: one paginated ``DescribeInstances`` filtered by the hub's tag. The poller's
    describe; the pages that need a view the poller has not got (not fresh, or just changed)
    ask the same way."""
    return views_of(await describe_pages(aws, hub_id, instance_ids, tags))


async def describe_pages(
    aws: Aws,
    hub_id: str,
    instance_ids: Iterable[str] | None = None,
    tags: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """`describe_hub_instances`'s answer as EC2 gave it, one dict a page (each one call)."""
    filters = [hub_filter(hub_id)]
    if instance_ids is not None:
        filters.append({"Name": "instance-id", "Values": sorted(instance_ids)})
    for key, value in sorted((tags or {}).items()):
        filters.append({"Name": f"tag:{key}", "Values": [value]})
    return await aws.paginate(
        "ec2", "describe_instances", Filters=filters, PaginationConfig={"PageSize": PAGE_SIZE}
    )


def views_of(pages: Iterable[dict[str, Any]]) -> dict[str, InstanceView]:
    """The instances of a DescribeInstances answer, by id."""
    views = (
        InstanceView.from_api(raw)
        for page in pages
        for reservation in page.get("Reservations", [])
        for raw in reservation.get("Instances", [])
    )
    return {view.instance_id: view for view in views}
