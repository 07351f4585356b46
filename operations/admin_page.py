"""The servers overview for admins: every server, its instance, uptime, activity and cost.

One pure function, `build_rows`, turns (the hub's servers, EC2's instance views, the
communities, the audit log's running periods, now) into `ServerRow` objects; both the page
(``/hub/servers-overview``, `ServersOverviewHandler`, admins only) and the command line
(``snh servers``, from the hub's REST API) use it, so they show the same table.

Where each column comes from:

- user, server, last activity, hub state: the hub's database (page) or REST API (command);
- community, image, instance type: the instance's tags and type (what actually runs), else
  the options the spawner saved;
- state, uptime: EC2 (one describe per region, or the shared poller's view when fresh);
  uptime is the time since the ``LaunchTime`` of a running instance (EC2 resets it at every start);
- cost this month: `operations.cost` (compute only; see there what it counts);
- removal date: `operations.reaper.removal_date` for stopped instances.

Instances of this hub that no server of the hub claims (a deleted user's, a leftover) are
listed too, with hub state "no server": an admin should see everything that costs money.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from hub_config.communities import CommunitiesConfig, InstanceType, load_instance_types
from spawner.aws import AwsError
from spawner.naming import (
    DEFAULT_SERVER_TAG,
    TAG_COMMUNITY,
    TAG_IMAGE,
    TAG_SERVER,
    TAG_USER,
    sanitize_tag_value,
)
from spawner.region import Regions

from .cost import (
    DOWN_ACTIONS,
    UP_ACTIONS,
    MonthCost,
    Run,
    month_cost,
    price_lookup,
    runs_from_audit,
)
from .reaper import removal_date

log = logging.getLogger(__name__)

#: Where ``servers-overview.html`` is: add it to ``c.JupyterHub.template_paths``.
TEMPLATE_PATH = str(Path(__file__).parent / "templates")


@dataclass(frozen=True)
class HubServer:
    """One server as the hub knows it (from its database or its REST API)."""

    user: str
    name: str  # "" for the default server
    #: "running", "pending: spawn", "stopped", … (JupyterHub's view, not EC2's)
    hub_state: str
    last_activity: dt.datetime | None = None
    started: dt.datetime | None = None
    #: from the spawner's state (``instance_id``, ``region``, ``options``) when readable
    instance_id: str | None = None
    region: str | None = None
    options: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ServerRow:
    user: str
    server: str
    community: str
    image: str
    instance_type: str
    #: EC2's state ("running", "stopped", …), "no instance", or "unknown" (EC2 unreachable)
    state: str
    hub_state: str
    instance_id: str
    region: str
    uptime_seconds: float | None
    last_activity: dt.datetime | None
    cost: MonthCost | None
    removal_date: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (times ISO-8601 UTC, cost in USD)."""
        return {
            "user": self.user,
            "server": self.server,
            "community": self.community,
            "image": self.image,
            "instance_type": self.instance_type,
            "state": self.state,
            "hub_state": self.hub_state,
            "instance_id": self.instance_id,
            "region": self.region,
            "uptime_seconds": round(self.uptime_seconds) if self.uptime_seconds else None,
            "last_activity": _iso(self.last_activity),
            "cost_this_month_usd": (
                round(self.cost.usd, 4) if self.cost and self.cost.usd is not None else None
            ),
            "cost_complete": self.cost.complete if self.cost else True,
            "hours_this_month": round(self.cost.hours, 3) if self.cost else 0.0,
            "removal_date": _iso(self.removal_date),
        }

    # text for people
    @property
    def uptime_text(self) -> str:
        return format_duration(self.uptime_seconds) if self.uptime_seconds is not None else ""

    @property
    def cost_text(self) -> str:
        return self.cost.format() if self.cost else ""

    def last_activity_text(self, now: dt.datetime) -> str:
        if self.last_activity is None:
            return "never"
        return format_duration((_utc(now) - _utc(self.last_activity)).total_seconds()) + " ago"


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return _utc(value).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return _utc(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


def format_duration(seconds: float | None) -> str:
    """``3d 4h``, ``2h 05m``, ``12m``, ``<1m``."""
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m" if minutes else "<1m"


# ------------------------------------------------------------------------------------------
# The hub's servers: from the REST API (command line) or the ORM (page)
# ------------------------------------------------------------------------------------------


def _from_state(state: Mapping[str, Any] | None) -> dict[str, Any]:
    state = state or {}
    options = state.get("options")
    return {
        "instance_id": state.get("instance_id") or None,
        "region": state.get("region") or None,
        "options": options if isinstance(options, Mapping) else None,
    }


def hub_servers_from_api(users: Iterable[Mapping[str, Any]]) -> list[HubServer]:
    """From ``GET /hub/api/users?include_stopped_servers`` user models. A server's ``state``
    is in the model only for a token with ``admin:server_state``; without it instances are
    matched by their tags."""
    servers = []
    for user in users:
        for name, model in (user.get("servers") or {}).items():
            if model.get("pending"):
                hub_state = f"pending: {model['pending']}"
            elif model.get("ready"):
                hub_state = "running"
            elif model.get("stopped", True) is False:
                hub_state = "starting"
            else:
                hub_state = "stopped"
            extra = _from_state(model.get("state"))
            if extra["options"] is None and isinstance(model.get("user_options"), Mapping):
                extra["options"] = model["user_options"] or None
            servers.append(
                HubServer(
                    user=str(user["name"]),
                    name=str(name or model.get("name") or ""),
                    hub_state=hub_state,
                    last_activity=parse_time(model.get("last_activity")),
                    started=parse_time(model.get("started")),
                    **extra,
                )
            )
    return servers


def hub_servers_from_orm(db: Any, users: Any = None) -> list[HubServer]:
    """From the hub's database (``orm.Spawner`` rows); ``users`` (the hub's ``UserDict``)
    adds what only the running hub knows: pending operations."""
    from jupyterhub import orm

    servers = []
    for orm_spawner in db.query(orm.Spawner).join(orm.User).order_by(orm.User.name):
        orm_user = orm_spawner.user
        live = None
        if users is not None:
            # only users and spawners already loaded (dict.get: creates nothing)
            user = users.get(orm_user.id)
            live = user.spawners.get(orm_spawner.name) if user is not None else None
        pending = getattr(live, "pending", None)
        if pending:
            hub_state = f"pending: {pending}"
        elif orm_spawner.server is not None:
            hub_state = "running"
        else:
            hub_state = "stopped"
        servers.append(
            HubServer(
                user=orm_user.name,
                name=orm_spawner.name or "",
                hub_state=hub_state,
                last_activity=orm_spawner.last_activity,
                started=orm_spawner.started,
                **_from_state(orm_spawner.state),
            )
        )
    return servers


# ------------------------------------------------------------------------------------------
# The rows
# ------------------------------------------------------------------------------------------


def build_rows(
    servers: Iterable[HubServer],
    views: Iterable[Any],
    communities: CommunitiesConfig | None,
    now: dt.datetime,
    *,
    runs: Mapping[str, list[Run]] | None = None,
    price_table: Mapping[str, InstanceType] | None = None,
    unknown_regions: Iterable[str] = (),
) -> list[ServerRow]:
    """One row per hub server, then one per instance of the hub no server claims.

    ``views`` are `spawner.poller.InstanceView` objects of every region described;
    ``unknown_regions`` are regions whose describe failed (their servers show "unknown"
    rather than "no instance"). ``runs``: `operations.cost.runs_from_audit` of the audit log.
    """
    now = _utc(now)
    runs = runs or {}
    unknown = set(unknown_regions)
    by_id = {v.instance_id: v for v in views}
    by_tags: dict[tuple[str, str], list[Any]] = {}
    for view in by_id.values():
        key = (view.tags.get(TAG_USER, ""), view.tags.get(TAG_SERVER, ""))
        by_tags.setdefault(key, []).append(view)
    for candidates in by_tags.values():
        # the live instance first, then the newest
        candidates.sort(
            key=lambda v: (
                v.state in ("terminated", "shutting-down"),
                -(v.launch_time.timestamp() if v.launch_time else 0),
            )
        )
    claimed: set[str] = set()
    rows = []
    for server in sorted(servers, key=lambda s: (s.user, s.name)):
        view = by_id.get(server.instance_id) if server.instance_id else None
        if view is None:
            key = (sanitize_tag_value(server.user), sanitize_tag_value(server.name or "_"))
            view = next((v for v in by_tags.get(key, []) if v.instance_id not in claimed), None)
        if view is not None:
            claimed.add(view.instance_id)
        rows.append(_row(server, view, communities, now, runs, price_table, unknown))
    for view in sorted(by_id.values(), key=lambda v: v.instance_id):
        if view.instance_id in claimed or view.state == "terminated":
            continue
        server_tag = view.tags.get(TAG_SERVER, "")
        orphan = HubServer(
            user=view.tags.get(TAG_USER, "?"),
            name="" if server_tag == DEFAULT_SERVER_TAG else server_tag,
            hub_state="no server",
        )
        rows.append(_row(orphan, view, communities, now, runs, price_table, unknown))
    return rows


def _row(
    server: HubServer,
    view: Any,
    communities: CommunitiesConfig | None,
    now: dt.datetime,
    runs: Mapping[str, list[Run]],
    price_table: Mapping[str, InstanceType] | None,
    unknown_regions: set[str],
) -> ServerRow:
    options = server.options or {}
    tags = view.tags if view is not None else {}
    community_id = tags.get(TAG_COMMUNITY) or str(options.get("community") or "")
    community = communities.by_id(community_id) if communities and community_id else None
    region = server.region or (community.region if community else "")
    if view is not None:
        state = view.state
        instance_type = view.instance_type
        zone = getattr(view, "availability_zone", "") or ""
        if not region and zone[-1:].isalpha():
            region = zone[:-1]  # us-east-1a -> us-east-1
    else:
        state = "unknown" if region in unknown_regions else "no instance"
        instance_type = str(options.get("instance_type") or "")
    uptime = None
    if view is not None and view.state == "running" and view.launch_time is not None:
        uptime = (now - _utc(view.launch_time)).total_seconds()
    instance_id = view.instance_id if view is not None else (server.instance_id or "")
    cost = None
    if instance_id:
        cost = month_cost(
            runs.get(instance_id, []),
            view,
            price_lookup(community, region, price_table),
            now,
        )
    return ServerRow(
        user=server.user,
        server=server.name,
        community=community_id,
        image=tags.get(TAG_IMAGE) or str(options.get("image") or ""),
        instance_type=instance_type,
        state=state,
        hub_state=server.hub_state,
        instance_id=instance_id,
        region=region,
        uptime_seconds=uptime,
        last_activity=server.last_activity,
        cost=cost,
        removal_date=removal_date(view, community) if view is not None else None,
    )


COLUMNS = (
    ("USER", lambda r, now: r.user),
    ("SERVER", lambda r, now: r.server or "(default)"),
    ("COMMUNITY", lambda r, now: r.community),
    ("IMAGE", lambda r, now: r.image),
    ("TYPE", lambda r, now: r.instance_type),
    ("STATE", lambda r, now: r.state),
    ("HUB", lambda r, now: r.hub_state),
    ("UPTIME", lambda r, now: r.uptime_text),
    ("LAST ACTIVITY", lambda r, now: r.last_activity_text(now)),
    ("COST (MONTH)", lambda r, now: r.cost_text),
    ("INSTANCE", lambda r, now: r.instance_id),
)


def format_table(rows: Iterable[ServerRow], now: dt.datetime) -> str:
    """The rows as a plain-text table, for the command line."""
    cells = [[name for name, _ in COLUMNS]]
    cells += [[str(get(row, now)) for _, get in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def totals(rows: Iterable[ServerRow]) -> dict[str, Any]:
    rows = list(rows)
    usd = sum(r.cost.usd for r in rows if r.cost and r.cost.usd is not None)
    return {
        "servers": len(rows),
        "running": sum(r.state == "running" for r in rows),
        "cost_this_month_usd": round(usd, 2),
        "cost_complete": all(r.cost.complete for r in rows if r.cost),
    }


# ------------------------------------------------------------------------------------------
# Gathering the inputs (shared by the page and the command line)
# ------------------------------------------------------------------------------------------


async def describe_views(
    regions: Regions, hub_id: str, names: Iterable[str]
) -> tuple[list[Any], list[str]]:
    """Every instance of the hub in the regions ``names`` (`Region.views`: the shared
    poller's when fresh, else one paginated describe per region). Returns the views and the
    regions whose describe failed."""
    views: list[Any] = []
    failed: list[str] = []
    for region in sorted(set(names)):
        try:
            found = await regions[region].views(hub_id)
        except AwsError as e:
            log.warning("servers overview: describe in %s failed: %s", region, e)
            failed.append(region)
            continue
        views.extend(found.values())
    return views, failed


class AuditRuns:
    """`operations.cost.runs_from_audit` of an audit file, read incrementally: each call parses
    only the lines appended since the last one (the whole file again after a rotation), and
    keeps only the lines that open or close a running period, of the last ``keep_days``
    (a period open since before that counts from EC2's ``LaunchTime`` if still running)."""

    def __init__(self, path: str | Path, *, keep_days: int = 92) -> None:
        self.path = Path(path)
        self.keep = dt.timedelta(days=keep_days)
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # two page views at once: two threads

    def __deepcopy__(self, memo: dict[int, Any]) -> AuditRuns:
        """Itself: the handler's arguments are config, which traitlets deep-copies, and the
        page must keep one reader for the hub's life."""
        return self

    def runs(self, now: dt.datetime) -> dict[str, list[Run]]:
        with self._lock:
            return self._runs(now)

    def records(self, now: dt.datetime) -> list[dict[str, Any]]:
        """The lines kept (those that open or close a run, of the last ``keep_days``), as
        `operations.budget` reads them: owners, servers and types with the runs."""
        with self._lock:
            self._runs(now)
            return list(self._events)

    def _runs(self, now: dt.datetime) -> dict[str, list[Run]]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._identity, self._offset, self._events = None, 0, []
            return {}
        identity = (stat.st_dev, stat.st_ino)
        if identity != self._identity or stat.st_size < self._offset:
            self._identity, self._offset, self._events = identity, 0, []
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data.rfind(b"\n") + 1  # a line being written is read next time
        self._offset += complete
        for line in data[:complete].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (
                record.get("action") in UP_ACTIONS or record.get("action") in DOWN_ACTIONS
            ):
                self._events.append(record)
        horizon = _iso(_utc(now) - self.keep) or ""
        self._events = [e for e in self._events if str(e.get("time", "")) >= horizon]
        return runs_from_audit(self._events)


# ------------------------------------------------------------------------------------------
# The page
# ------------------------------------------------------------------------------------------


class ServersOverviewHandler(BaseHandler):
    """``GET /hub/servers-overview`` (HTML; ``?format=json`` for the rows as JSON).

    Admins only: the ``admin-ui`` scope, like JupyterHub's own admin page. Register with
    `overview_handler` in ``c.JupyterHub.extra_handlers``.
    """

    def initialize(
        self,
        regions: Regions,
        hub_id: str,
        communities: CommunitiesConfig | None = None,
        audit_runs: AuditRuns | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.regions = regions
        self.overview_hub_id = hub_id
        self.communities = communities
        self.audit_runs = audit_runs
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))

    async def rows(self) -> tuple[list[ServerRow], list[str]]:
        communities = self.communities
        names = {c.region for c in communities.communities} if communities else set()
        servers = hub_servers_from_orm(self.db, self.users)
        names |= {s.region for s in servers if s.region}
        views, failed = await describe_views(self.regions, self.overview_hub_id, names)
        runs = (
            await asyncio.to_thread(self.audit_runs.runs, self.clock())
            if self.audit_runs is not None
            else {}
        )
        table = await asyncio.to_thread(load_instance_types)
        rows = build_rows(
            servers,
            views,
            communities,
            self.clock(),
            runs=runs,
            price_table=table,
            unknown_regions=failed,
        )
        return rows, failed

    @web.authenticated
    @needs_scope("admin-ui")
    async def get(self) -> None:
        rows, failed = await self.rows()
        now = self.clock()
        if self.get_argument("format", "") == "json":
            self.set_header("Content-Type", "application/json")
            self.finish(
                json.dumps(
                    {
                        "time": _iso(now),
                        "rows": [r.as_dict() for r in rows],
                        "totals": totals(rows),
                        "unreachable_regions": failed,
                    }
                )
            )
            return
        html = await self.render_template(
            "servers-overview.html",
            rows=rows,
            now=now,
            totals=totals(rows),
            unreachable_regions=failed,
            month=f"{_utc(now):%B %Y}",
        )
        self.finish(html)


def overview_handler(
    *,
    regions: Regions,
    hub_id: str,
    communities: CommunitiesConfig | None,
    audit_log: str | None = None,
) -> tuple[str, type, dict[str, Any]]:
    """The ``c.JupyterHub.extra_handlers`` entry of the page (served at
    ``/hub/servers-overview``): the hub's own `Regions` (its pollers' views are the page's)
    and loaded communities."""
    return (
        r"/servers-overview",
        ServersOverviewHandler,
        {
            "regions": regions,
            "hub_id": hub_id,
            "communities": communities,
            # one reader for the hub's life: it reads only what was appended since
            "audit_runs": AuditRuns(audit_log) if audit_log else None,
        },
    )
