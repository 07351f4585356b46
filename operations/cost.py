"""Estimated compute cost of each instance this calendar month (UTC): pure functions.

What is counted, and how honest it is:

- **Only compute**: running hours times the instance type's estimated on-demand price per hour
  from ``hub_config/instance_types.yaml`` (in the community's region). Not counted: EBS
  volumes (billed while stopped too), snapshots, data transfer, taxes and discounts. It is
  an estimate for spotting the expensive servers, not a bill (use Cost Explorer with the
  ``synapse:*``/``jupyterhub:*`` tags for that).
- **Running periods come from two sources.** The current run is exact: EC2 sets an
  instance's ``LaunchTime`` at every start, so a running instance has run since then. Earlier
  runs of the month come from the audit log (`operations.audit`): each ``launch``/``resume``/
  ``adopt`` line opens a period, the next ``stop``/``stopped``/``terminate`` line closes it
  (the times of the hub's requests, seconds off EC2's transitions). Where both describe the
  same run, the overlap is counted once.
- **It can undercount, never double count.** A period whose end the log does not have (the
  instance stopped itself while the hub was down, or the log was rotated) is closed at EC2's
  stop time when EC2 gives one, else counted as nothing; a period whose start is missing is
  not counted. Such estimates are marked ``complete=False`` (the page shows them as "≥").
  The page reads only the audit log's last 92 days (`operations.admin_page.AuditRuns`).
  EC2's one-minute minimum per start is ignored.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hub_config.communities import Community, InstanceType

#: Audit actions that mean "the instance runs from now on" / "does not run from now on".
UP_ACTIONS = frozenset({"launch", "resume", "adopt"})
DOWN_ACTIONS = frozenset({"stop", "stopped", "terminate"})


@dataclass(frozen=True)
class Run:
    """A period an instance ran, as the audit log tells it (``end`` None: still open)."""

    start: dt.datetime
    end: dt.datetime | None
    instance_type: str | None = None


@dataclass(frozen=True)
class MonthCost:
    """The estimate for one instance: hours this month, USD (None when no price is known for
    any hour), and whether every period's ends were known."""

    hours: float
    usd: float | None
    complete: bool

    def format(self) -> str:
        if self.usd is None:
            return "?" if self.hours else "$0.00"
        return f"{'' if self.complete else '≥ '}${self.usd:,.2f}"


def month_start(now: dt.datetime) -> dt.datetime:
    """00:00 UTC on the first day of ``now``'s month (UTC)."""
    now = _utc(now)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _time(record: Mapping[str, Any]) -> dt.datetime | None:
    text = record.get("time")
    if not isinstance(text, str):
        return None
    try:
        return _utc(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


def runs_from_audit(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Run]]:
    """Running periods per instance id from audit records (any order; dry runs, failed
    actions and lines without a time are ignored)."""
    events: list[tuple[dt.datetime, str, str, str | None]] = []
    for record in records:
        action = record.get("action")
        instance_id = record.get("instance_id")
        if action not in UP_ACTIONS and action not in DOWN_ACTIONS:
            continue
        if not isinstance(instance_id, str) or record.get("dry_run"):
            continue
        if record.get("outcome") not in (None, "ok"):
            continue
        when = _time(record)
        if when is None:
            continue
        kind = "up" if action in UP_ACTIONS else "down"
        events.append((when, instance_id, kind, record.get("instance_type")))
    events.sort(key=lambda e: e[0])
    runs: dict[str, list[Run]] = defaultdict(list)
    open_runs: dict[str, tuple[dt.datetime, str | None]] = {}
    for when, instance_id, kind, instance_type in events:
        if kind == "up":
            open_runs.setdefault(instance_id, (when, instance_type))
        elif instance_id in open_runs:
            start, run_type = open_runs.pop(instance_id)
            runs[instance_id].append(Run(start, when, run_type))
    for instance_id, (start, run_type) in open_runs.items():
        runs[instance_id].append(Run(start, None, run_type))
    return dict(runs)


def price_lookup(
    community: Community | None, region: str, table: Mapping[str, InstanceType] | None = None
) -> Callable[[str], float | None]:
    """USD per hour of an instance type: the community's (priced for its region), else the
    instance-type table's in ``region`` (a type the community no longer offers), else None."""

    def price(instance_type: str) -> float | None:
        if community is not None:
            offered = community.instance_type(instance_type)
            if offered is not None:
                return offered.price_in(region or community.region)
        if table is not None and instance_type in table:
            return table[instance_type].price_in(region)
        return None

    return price


def month_cost(
    runs: Iterable[Run],
    view: Any,
    price: Callable[[str], float | None],
    now: dt.datetime,
) -> MonthCost:
    """The estimate for one instance from its audit ``runs`` and its current EC2 ``view``
    (a `spawner.poller.InstanceView`, or None when EC2 did not list it)."""
    now = _utc(now)
    start_of_month = month_start(now)
    state = getattr(view, "state", None)
    view_type = getattr(view, "instance_type", None) or None
    complete = True
    periods: list[tuple[dt.datetime, dt.datetime, str | None]] = []
    for run in runs:
        start = _utc(run.start)
        end = run.end
        if end is None:
            since = getattr(view, "state_since", None)
            if state in ("pending", "running"):
                end = now
            elif since is not None and _utc(since) >= start:
                end = since
            else:
                complete = False
                continue
        periods.append((start, _utc(end), run.instance_type or view_type))
    launched = getattr(view, "launch_time", None)
    if state in ("pending", "running") and launched is not None:
        periods.append((_utc(launched), now, view_type))
    # clip to this month, then count overlapping time once (the earlier period's type wins)
    clipped = sorted(
        (max(s, start_of_month), min(e, now), t) for s, e, t in periods if e > start_of_month
    )
    seconds: dict[str | None, float] = defaultdict(float)
    covered_until = start_of_month
    for start, end, instance_type in clipped:
        start = max(start, covered_until)
        if end <= start:
            continue
        seconds[instance_type] += (end - start).total_seconds()
        covered_until = end
    hours = sum(seconds.values()) / 3600
    usd: float | None = 0.0
    priced_any = False
    for instance_type, secs in seconds.items():
        per_hour = price(instance_type) if instance_type else None
        if per_hour is None:
            complete = False
            continue
        priced_any = True
        usd = (usd or 0.0) + secs / 3600 * per_hour
    if seconds and not priced_any:
        usd = None
    return MonthCost(hours=hours, usd=usd, complete=complete)
