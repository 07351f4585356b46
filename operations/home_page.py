"""The home page's "Stopped since …, will be removed on …" line under each stopped server.

A stopped server keeps its instance and home volume, and the reaper (`operations.reaper`) removes
them once the server has been stopped longer than its community's ``dormancy_days``: users
should learn that on the page where they start servers, not from a vanished volume.

The JupyterHub way, on JupyterHub 5 and 6 alike: ``templates/home.html`` here extends the
stock page (``{% extends "templates/home.html" %}``) and calls ``snh_stopped_line(spawner)``
for each server; that function comes from ``c.JupyterHub.template_vars``, whose callable
values JupyterHub calls with the current user at every render (`HomeNotices`). The
hub renders templates with Jinja's async mode, which awaits a coroutine a template calls, so
the line can ask EC2 without a handler or an API of its own.

Where the dates come from, in the reaper's order (so the page promises what the reaper does):
EC2's own time of the stop (``InstanceView.state_since``, from the shared poller's view, or one
describe of the hub's instances when the poller is not fresh), else the audit log's last stop
(`operations.reaper.last_stop_times`), else the stop time the spawner saved in its state. The
removal date is `operations.reaper.removal_date`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from hub_config.communities import CommunitiesConfig, Community
from spawner.aws import AwsError
from spawner.naming import TAG_COMMUNITY
from spawner.poller import UNKNOWN, InstanceView
from spawner.region import Regions

from . import audit
from .reaper import last_stop_times, removal_date

log = logging.getLogger(__name__)

#: The template variable the page calls, and where the page is (already on the hub's
#: ``template_paths`` for the servers overview).
TEMPLATE_VAR = "snh_stopped_line"
TEMPLATE_DIR = str(Path(__file__).parent / "templates")


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _saved_stop_time(state: Mapping[str, Any]) -> dt.datetime | None:
    text = state.get("stopped_at")
    if not isinstance(text, str) or not text:
        return None
    try:
        return audit.parse_time(text)
    except ValueError:
        return None


def format_day(value: dt.datetime) -> str:
    """``2 April 2025`` (UTC)."""
    value = _utc(value)
    return f"{value.day} {value:%B %Y}"


def format_moment(value: dt.datetime) -> str:
    """``3 March 2025, 14:05 UTC``."""
    value = _utc(value)
    return f"{format_day(value)}, {value:%H:%M} UTC"


def stopped_line(
    state: Mapping[str, Any] | None,
    view: InstanceView | Any | None,
    community: Community | None,
    audit_stopped_at: dt.datetime | None,
    now: dt.datetime,
    *,
    active: bool = False,
) -> str | None:
    """The line for one server, or None when there is nothing to say.

    ``state``: the spawner's saved state (an ``instance_id`` means the server has an
    instance). ``view``: the instance as EC2 last described it; None when a recent describe
    did not list it (terminated and gone: nothing to say), `spawner.poller.UNKNOWN` when EC2
    could not be asked (the hub's word then: a server it shows stopped has a stopped
    instance). ``active``: the hub shows the server running or busy (nothing to say).
    """
    state = state or {}
    instance_id = state.get("instance_id")
    if active or not instance_id or view is None:
        return None
    if view is UNKNOWN:
        view = InstanceView(str(instance_id), "stopped", "", {})
    elif view.state != "stopped":
        return None
    since = view.state_since or audit_stopped_at or _saved_stop_time(state)
    due = removal_date(view, community, stopped_at=since)
    if since is None or due is None:
        return "Stopped. The time of the stop is unknown, so it is not scheduled for removal."
    if due <= _utc(now):
        return (
            f"Stopped since {format_moment(since)}, will be removed at the next clean-up "
            f"(due on {format_day(due)})."
        )
    return f"Stopped since {format_moment(since)}, will be removed on {format_day(due)}."


# ------------------------------------------------------------------------------------------
# The template variable
# ------------------------------------------------------------------------------------------


async def _nothing(spawner: Any) -> str:
    return ""


class HomeNotices:
    """The ``c.JupyterHub.template_vars`` value: called with the current user at every page
    render (cheaply: nothing is looked up until the page asks), it returns the coroutine
    function the template calls per server. EC2 and the audit log are asked at most once per
    page and only when a server has an instance the hub does not show running."""

    def __init__(
        self,
        *,
        regions: Regions,
        hub_id: str,
        communities: CommunitiesConfig | None,
        audit_log: str | Path | None = None,
        clock: Callable[[], dt.datetime] = audit.utcnow,
        describe_timeout: float = 5.0,
    ) -> None:
        self.regions = regions
        self.hub_id = hub_id
        self._communities = communities
        self.audit_log = audit_log
        self.clock = clock
        self.describe_timeout = describe_timeout

    def __call__(self, user: Any) -> Callable[[Any], Awaitable[str]]:
        if user is None:
            return _nothing
        return _Page(self, user).line

    def communities(self) -> CommunitiesConfig | None:
        return self._communities


class _Page:
    """One render of the home page: what EC2 and the audit log said, asked once."""

    def __init__(self, notices: HomeNotices, user: Any) -> None:
        self.notices = notices
        self.user = user
        self._views: dict[str, dict[str, InstanceView] | Any] = {}
        self._stops: dict[str, dt.datetime] | None = None

    def _instance_ids(self, region: str) -> set[str]:
        """The instances of all the user's servers in ``region``, from their saved state."""
        states = [s.state or {} for s in self.user.orm_user.orm_spawners.values()]
        return {
            str(s["instance_id"])
            for s in states
            if s.get("instance_id") and s.get("region") == region
        }

    async def views(self, region: str, *, describe: bool = False) -> dict[str, InstanceView] | Any:
        """The hub's instances in ``region`` (the poller's when fresh, unless ``describe``;
        else one describe of the user's instances there), or `UNKNOWN` when EC2 cannot be
        asked."""
        key = f"{region} described" if describe else region
        if key not in self._views:
            try:
                self._views[key] = await asyncio.wait_for(
                    self.notices.regions[region].views(
                        self.notices.hub_id, self._instance_ids(region), describe=describe
                    ),
                    self.notices.describe_timeout,
                )
            except (AwsError, TimeoutError) as e:
                log.warning("home page: cannot describe instances in %s: %s", region, e)
                self._views[key] = UNKNOWN
        return self._views[key]

    async def audit_stops(self) -> dict[str, dt.datetime]:
        if self._stops is None:
            path = self.notices.audit_log
            self._stops = (
                await asyncio.to_thread(lambda: last_stop_times(audit.read_records(path)))
                if path
                else {}
            )
        return self._stops

    async def line(self, spawner: Any) -> str:
        """For a `jupyterhub.spawner.Spawner` or a stopped named server's ``orm.Spawner``
        (what ``user.all_spawners()`` yields). Never raises: the home page must render."""
        try:
            return await self._line(spawner) or ""
        except Exception:
            log.exception("home page: no stopped-server line for %r", spawner)
            return ""

    async def _line(self, spawner: Any) -> str | None:
        orm_spawner = getattr(spawner, "orm_spawner", None)
        if orm_spawner is not None:  # a Spawner object
            state, active = orm_spawner.state or {}, bool(spawner.active)
        else:  # an orm.Spawner (JupyterHub keeps no Spawner object for it)
            state, active = spawner.state or {}, spawner.server is not None
        instance_id, region = state.get("instance_id"), state.get("region")
        if active or not instance_id or not region:
            return None
        views = await self.views(region)
        view = UNKNOWN if views is UNKNOWN else views.get(instance_id)
        if isinstance(view, InstanceView) and view.state in ("pending", "running", "stopping"):
            # The hub shows it stopped: the poller's view is from before the stop (it is
            # refreshed every 30 s), or it runs behind the hub's back. EC2 says which.
            views = await self.views(region, describe=True)
            view = UNKNOWN if views is UNKNOWN else views.get(instance_id)
        known = isinstance(view, InstanceView)
        stopped_at = None
        if view is UNKNOWN or (known and view.state_since is None):
            stopped_at = (await self.audit_stops()).get(instance_id)
        community_id = (view.tags.get(TAG_COMMUNITY) if known else None) or (
            state.get("options") or {}
        ).get("community")
        communities = self.notices.communities()
        community = communities.by_id(community_id) if communities and community_id else None
        return stopped_line(state, view, community, stopped_at, self.notices.clock())
