"""Monthly budgets: what a user and a community have spent this calendar month (UTC), and
whether a start may begin.

The rule (communities keys ``budget_usd_per_month``, ``user_budget_usd_per_month``,
``managers``): a start that would begin while the community's spend, or the user's own spend
in that community, is at or over its budget is refused, naming the budget, the spend and whom
to ask; from `WARN_AT` of a budget the spawn form and the home page warn. Running servers are
stopped for a budget only in a community with ``stop_over_budget``, after the same warning as
an idle cull (`operations.stop_watch`). Refusal happens before any AWS call that costs money.

The spend is an estimate from what the hub knows, with the price table's source and date
(`hub_config.communities.PriceTable`) next to every figure:

- **compute**: each instance's running hours this month times its type's hourly price, as the
  admin overview counts them (`operations.cost`: the audit log's runs, EC2's ``LaunchTime``
  for the current one);
- **storage**: each of the hub's volumes that exists now (the home volume and the root
  volume, billed while stopped too), its size times the part of the month since it was
  created, at the gp3 price per GB-month; each snapshot of the hub's likewise at the snapshot
  price (an upper bound: snapshots are incremental). Volumes and snapshots deleted earlier in
  the month are not counted, so storage can undercount, never double count.

Pure functions (`spend_by_owner`, `verdict`) do the arithmetic; `BudgetGuard` gathers the
inputs (one describe of volumes and snapshots and the poller's instance views per region, the
audit log) at most every ``cache_seconds`` and is what the spawner and the home page ask.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub_config.communities import CommunitiesConfig, Community, PriceTable
from spawner.aws import AwsError
from spawner.naming import DEFAULT_SERVER_TAG, TAG_COMMUNITY, TAG_HUB, TAG_SERVER, TAG_USER
from spawner.region import Regions

from . import audit
from .admin_page import AuditRuns
from .cost import (
    DOWN_ACTIONS,
    UP_ACTIONS,
    month_cost,
    month_start,
    price_lookup,
    runs_from_audit,
)

log = logging.getLogger(__name__)

#: The share of a budget from which users are warned.
WARN_AT = 0.8
#: Seconds a start's (and the spawn form's) figures may be old.
START_MAX_AGE = 5.0
#: (user, community id): whose spend; user '' is the community's total.
Owner = tuple[str, str]


@dataclass
class Spend:
    compute_usd: float = 0.0
    storage_usd: float = 0.0
    #: False when some running period or price was unknown (the figure may undercount)
    complete: bool = True

    @property
    def usd(self) -> float:
        return self.compute_usd + self.storage_usd

    def add(self, other: Spend) -> None:
        self.compute_usd += other.compute_usd
        self.storage_usd += other.storage_usd
        self.complete &= other.complete


@dataclass(frozen=True)
class Stored:
    """A volume or snapshot of the hub's, as EC2 describes it."""

    user: str
    community: str
    size_gb: int
    since: dt.datetime
    snapshot: bool = False
    server: str = ""


@dataclass(frozen=True)
class Verdict:
    """What a start may do: ``level`` is ``ok``, ``warn`` (may start; tell the user) or
    ``over`` (refuse); ``message`` says it in the user's words."""

    level: str
    message: str = ""
    figures: Mapping[str, float] = field(default_factory=dict)
    #: Over a budget: which one, the spend and whom to ask, for a running server's notice.
    reason: str = ""


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def month_hours(now: dt.datetime) -> float:
    now = _utc(now)
    return calendar.monthrange(now.year, now.month)[1] * 24.0


def storage_usd(item: Stored, prices: PriceTable, now: dt.datetime) -> float:
    """GB, times the part of this month since ``item`` appeared, times the GB-month price."""
    price = prices.snapshot_gb_month if item.snapshot else prices.ebs_gb_month
    if price is None:
        return 0.0
    now = _utc(now)
    start = max(_utc(item.since), month_start(now))
    hours = max(0.0, (now - start).total_seconds() / 3600)
    return item.size_gb * price * hours / month_hours(now)


@dataclass
class ServerSpend:
    """One server's month: its latest instance type, running hours and spend."""

    user: str
    community: str
    server: str
    instance_type: str = ""
    hours: float = 0.0
    spend: Spend = field(default_factory=Spend)


#: (user, community id, server name)
ServerKey = tuple[str, str, str]


def spend_by_server(
    records: Iterable[Mapping[str, Any]],
    views: Mapping[str, Any],
    stored: Iterable[Stored],
    communities: CommunitiesConfig,
    prices: PriceTable,
    now: dt.datetime,
) -> dict[ServerKey, ServerSpend]:
    """This month's spend per server (until ``now``; a past ``now`` gives a past month).

    ``records``: audit records (their ``launch``/``resume``/… lines give each instance's
    runs, owner and server); ``views``: the hub's instances as EC2 describes them now, by
    id (`spawner.poller.InstanceView`); ``stored``: the hub's volumes and snapshots."""
    records = list(records)
    keys: dict[str, ServerKey] = {}
    types: dict[str, str] = {}
    for record in records:
        instance_id = record.get("instance_id")
        if isinstance(instance_id, str) and record.get("user") and record.get("community"):
            server = str(record.get("server") or "")
            keys[instance_id] = (str(record["user"]), str(record["community"]), server)
            if record.get("instance_type"):
                types[instance_id] = str(record["instance_type"])
    for instance_id, view in views.items():
        tags = getattr(view, "tags", {}) or {}
        if tags.get(TAG_USER) and tags.get(TAG_COMMUNITY):
            server = tags.get(TAG_SERVER, DEFAULT_SERVER_TAG)
            server = "" if server == DEFAULT_SERVER_TAG else server
            keys[instance_id] = (tags[TAG_USER], tags[TAG_COMMUNITY], server)
        types[instance_id] = getattr(view, "instance_type", "") or types.get(instance_id, "")
    runs = runs_from_audit(records)
    cut_off = _stopped_before_started(records)
    out: dict[ServerKey, ServerSpend] = {}

    def entry(key: ServerKey) -> ServerSpend:
        return out.setdefault(key, ServerSpend(*key))

    for instance_id in set(runs) | set(views) | cut_off:
        key = keys.get(instance_id)
        if key is None:
            continue
        community = communities.by_id(key[1])
        region = community.region if community else ""
        cost = month_cost(
            runs.get(instance_id, []), views.get(instance_id), price_lookup(community, region), now
        )
        part = Spend(compute_usd=cost.usd or 0.0, complete=cost.complete and cost.usd is not None)
        if not cost.hours and instance_id not in cut_off:
            part.complete = True  # nothing ran: nothing unknown
        if instance_id in cut_off:
            part.complete = False  # it ran from before the records into this month
        server = entry(key)
        server.spend.add(part)
        server.hours += cost.hours
        server.instance_type = types.get(instance_id) or server.instance_type
    for item in stored:
        entry((item.user, item.community, item.server)).spend.add(
            Spend(storage_usd=storage_usd(item, prices, now))
        )
    return out


def _stopped_before_started(records: Iterable[Mapping[str, Any]]) -> set[str]:
    """Instances whose first line in ``records`` stops them: they ran from before the
    records began, for a time the estimate cannot count ("at least")."""
    first: dict[str, tuple[str, str]] = {}
    for record in records:
        instance_id, action, when = (
            record.get("instance_id"),
            record.get("action"),
            str(record.get("time")),
        )
        if not isinstance(instance_id, str) or action not in UP_ACTIONS | DOWN_ACTIONS:
            continue
        if instance_id not in first or when < first[instance_id][0]:
            first[instance_id] = (when, str(action))
    return {i for i, (_, action) in first.items() if action in DOWN_ACTIONS}


def spend_by_owner(
    records: Iterable[Mapping[str, Any]],
    views: Mapping[str, Any],
    stored: Iterable[Stored],
    communities: CommunitiesConfig,
    prices: PriceTable,
    now: dt.datetime,
) -> dict[Owner, Spend]:
    """This month's spend per (user, community) and per (``''``, community): the sums of
    `spend_by_server`."""
    totals: dict[Owner, Spend] = defaultdict(Spend)
    servers = spend_by_server(records, views, stored, communities, prices, now)
    for (user, community, _), server in servers.items():
        totals[(user, community)].add(server.spend)
        totals[("", community)].add(server.spend)
    return dict(totals)


def money(value: float) -> str:
    """Cents, or four decimals below ten cents (a figure of a day's use is not "$0.00")."""
    return f"${value:,.2f}" if value >= 0.1 or value == 0 else f"${value:.4f}"


def _ask(community: Community) -> str:
    if community.managers:
        return "ask your community manager (" + ", ".join(community.managers) + ")"
    return "ask your community manager"


def _running(community: Community) -> str:
    if community.stop_over_budget:
        return "Running servers are stopped after a warning (their disks are kept)."
    return "Running servers keep running."


def verdict(
    user: str, community: Community, spends: Mapping[Owner, Spend], prices: PriceTable
) -> Verdict:
    """The budget rule for a start of ``user`` in ``community`` (see the module docstring)."""
    own = spends.get((user, community.id), Spend())
    everyone = spends.get(("", community.id), Spend())
    checks = [
        (community.user_budget_usd_per_month, own, "your own monthly budget in"),
        (community.budget_usd_per_month, everyone, "the monthly budget of"),
    ]
    figures = {"user_spend_usd": own.usd, "community_spend_usd": everyone.usd}
    warnings = []
    for budget, spend, whose in checks:
        if budget is None:
            continue
        where = f"{whose} {community.name}"
        said = (
            f"{'at least ' if not spend.complete else ''}{money(spend.usd)} of "
            f"{where}, {money(budget)}, is spent this month"
        )
        if spend.usd >= budget:
            return Verdict(
                "over",
                f"{said[0].upper()}{said[1:]}, so no server can start until next month; "
                f"{_ask(community)} to raise it. {_running(community)} "
                f"(Spend {prices.note}.)",
                figures,
                f"{said[0].upper()}{said[1:]}; {_ask(community)}.",
            )
        if spend.usd >= WARN_AT * budget:
            warnings.append(f"{said[0].upper()}{said[1:]} ({spend.usd / budget:.0%}).")
    if warnings:
        return Verdict(
            "warn",
            " ".join(warnings) + f" At the budget, servers can no longer start; {_ask(community)}. "
            f"(Spend {prices.note}.)",
            figures,
        )
    return Verdict("ok", "", figures)


class BudgetGuard:
    """What the spawner (``EC2Spawner.budget_check``) and the home page ask. Inputs are
    gathered at most every ``cache_seconds`` (one describe of volumes and snapshots per
    region, the poller's views, the audit log), so a page or a start costs no AWS call most
    of the time; EC2 not answering is not a reason to refuse a start (the spend is then the
    audit log's alone, and says so in the log)."""

    def __init__(
        self,
        *,
        regions: Regions,
        hub_id: str,
        communities: CommunitiesConfig,
        prices: PriceTable,
        audit_log: str | Path | None,
        cache_seconds: float = 60.0,
        clock: Callable[[], dt.datetime] = audit.utcnow,
    ) -> None:
        self.regions, self.hub_id, self.communities = regions, hub_id, communities
        self.prices, self.audit_log, self.cache_seconds = prices, audit_log, cache_seconds
        self.clock = clock
        self._audit = AuditRuns(audit_log) if audit_log else None
        self._spends: dict[Owner, Spend] | None = None
        self._taken = 0.0
        self._lock = asyncio.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> BudgetGuard:
        """Itself: traitlets deep-copies config values; one cache for the hub."""
        return self

    def forget(self) -> None:
        """Look again at the next question (after a start or stop changed the spend)."""
        self._spends = None

    async def spends(self, max_age: float | None = None) -> dict[Owner, Spend]:
        """The spend per owner, gathered at most ``max_age`` seconds ago (default:
        ``cache_seconds``)."""
        max_age = self.cache_seconds if max_age is None else max_age
        async with self._lock:
            if self._spends is None or time.monotonic() - self._taken > max_age:
                self._spends = await self._gather()
                self._taken = time.monotonic()
            return self._spends

    async def check(self, user: str, community: Community) -> Verdict:
        """The verdict for a start (or the spawn form) of ``user`` in ``community``, from
        figures at most `START_MAX_AGE` seconds old: a start is rare and must not begin on
        an hour-old figure, a page view is frequent and may."""
        if community.budget_usd_per_month is None and community.user_budget_usd_per_month is None:
            return Verdict("ok")
        spends = await self.spends(min(START_MAX_AGE, self.cache_seconds))
        return verdict(user, community, spends, self.prices)

    async def _gather(self) -> dict[Owner, Spend]:
        now = self.clock()
        records, views, stored = await self.inputs(month_start(now))
        return spend_by_owner(records, views, stored, self.communities, self.prices, now)

    async def inputs(
        self, since: dt.datetime
    ) -> tuple[list[dict[str, Any]], dict[str, Any], list[Stored]]:
        """What the figures are made of: the audit log's records from a month before
        ``since`` on (a run may have begun then), the hub's instances and its volumes and
        snapshots in every region of the communities."""
        records = await asyncio.to_thread(self._month_records, since)
        views: dict[str, Any] = {}
        stored: list[Stored] = []
        for region in sorted({c.region for c in self.communities.communities}):
            try:
                views.update(await self.regions[region].views(self.hub_id))
                stored += await self._stored(region)
            except AwsError as e:
                log.warning("budgets: EC2 in %s did not answer (%s); audit log only", region, e)
        return records, views, stored

    def _month_records(self, since: dt.datetime) -> list[dict[str, Any]]:
        """The audit log's run lines from a month before ``since`` (a run may have begun
        then), read incrementally: only what was appended since the last look is parsed,
        so a start's check does not re-read a log that grows for the hub's life."""
        if self._audit is None:
            return []
        earliest = audit.isoformat(since - dt.timedelta(days=31))
        return [r for r in self._audit.records(self.clock()) if str(r.get("time")) >= earliest]

    async def _stored(self, region: str) -> list[Stored]:
        aws = self.regions[region].aws
        hub = [{"Name": f"tag:{TAG_HUB}", "Values": [self.hub_id]}]
        # every page: a hub with more than a page of volumes or snapshots must not undercount
        volumes = await aws.paginate("ec2", "describe_volumes", Filters=hub)
        snapshots = await aws.paginate("ec2", "describe_snapshots", OwnerIds=["self"], Filters=hub)
        items = []
        for raw, snapshot, when in [
            *((v, False, "CreateTime") for page in volumes for v in page.get("Volumes", [])),
            *((s, True, "StartTime") for page in snapshots for s in page.get("Snapshots", [])),
        ]:
            tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
            if not tags.get(TAG_USER) or not tags.get(TAG_COMMUNITY) or not raw.get(when):
                continue
            size = raw.get("VolumeSize" if snapshot else "Size") or 0
            server = tags.get(TAG_SERVER, DEFAULT_SERVER_TAG)
            items.append(
                Stored(
                    tags[TAG_USER],
                    tags[TAG_COMMUNITY],
                    int(size),
                    raw[when],
                    snapshot,
                    "" if server == DEFAULT_SERVER_TAG else server,
                )
            )
        return items


class HomeSpend:
    """The home page's "Your spend this month" lines (``c.JupyterHub.template_vars``, called
    with the current user at every render): per community the user spent in, the figure, the
    budgets and, from `WARN_AT`, the warning. Never raises: the home page must render."""

    def __init__(self, guard: BudgetGuard) -> None:
        self.guard = guard

    def __call__(self, user: Any) -> Callable[[], Any]:
        async def lines() -> list[dict[str, str]]:
            if user is None:
                return []
            try:
                return await self._lines(user.name)
            except Exception:
                log.exception("home page: no spend line for %s", user.name)
                return []

        return lines

    async def _lines(self, name: str) -> list[dict[str, str]]:
        spends = await self.guard.spends()
        out = []
        for community in self.guard.communities.communities:
            spend = spends.get((name, community.id))
            if spend is None:
                continue
            budgets = []
            if community.user_budget_usd_per_month is not None:
                budgets.append(f"your budget {money(community.user_budget_usd_per_month)}")
            if community.budget_usd_per_month is not None:
                budgets.append(f"the community's {money(community.budget_usd_per_month)}")
            figure = f"{'at least ' if not spend.complete else ''}{money(spend.usd)}"
            out.append(
                {
                    "community": community.name,
                    "text": f"{community.name}: {figure} this month"
                    + (f" ({'; '.join(budgets)})" if budgets else "")
                    + f", {self.guard.prices.note}.",
                    "warning": verdict(name, community, spends, self.guard.prices).message,
                }
            )
        return out
