"""Before the idle culler stops a server, its owner is told, with a **Keep running** action.

The notice: a running server whose community's culler (`hub_config.culling.CullRule`: the
same timeout, overrides included) will stop it within `warning_seconds` (the community's
``idle_warning_minutes``, at most half the timeout) gets "Idle since …; it will be stopped
at … (its disk is kept)". `operations.stop_watch` shows it on the home page and in
JupyterLab and sends it by e-mail, together with the budget stops' notices.

The grant: **Keep running** (``POST /hub/keep-running`` from the home page, with the owner's
browser session and the form's XSRF field; or ``POST /hub/api/users/<name>/[servers/<server>/]
keep-running`` with a token that may access that server, which is how JupyterLab's button
asks through the notebook server) records activity now, as work would, which gives the
server one more idle timeout. Grants are bounded by the community's ``keep_running_hours``:
once that long has passed since the server's last activity that was not a grant, the action
is refused with the reason, and the culler stops the server as usual. Each grant and each
refusal is an audit line (``keep_running``, with ``via``: ``home`` or ``jupyterlab``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import has_scope
from jupyterhub.utils import utcnow
from tornado import web

from hub_config.communities import CommunitiesConfig
from hub_config.culling import CullRule

from . import audit
from .home_page import format_moment

#: The home page's grant URL under the hub.
PATH = "/keep-running"


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


@dataclass(frozen=True)
class Notice:
    """A server's coming stop: ``kind`` ``idle`` (the culler; Keep running may apply) or
    ``budget`` (`operations.stop_watch`; ``reason`` says which budget and whom to ask)."""

    since: dt.datetime
    stop_at: dt.datetime
    kind: str = "idle"
    reason: str = ""

    @property
    def can_keep_running(self) -> bool:
        return self.kind == "idle"

    @property
    def text(self) -> str:
        if self.kind == "budget":
            return (
                f"{self.reason} This server will be stopped at {format_moment(self.stop_at)} "
                "(its disk is kept)."
            )
        return (
            f"Idle since {format_moment(self.since)}: it will be stopped at "
            f"{format_moment(self.stop_at)} (its disk is kept) unless you keep it running."
        )

    @property
    def short(self) -> str:
        """For JupyterLab's notifications, which show 140 characters at most."""
        when = format_moment(self.stop_at)
        if self.kind == "budget":
            return f"Budget spent: this server stops at {when} (its disk is kept)."
        return f"Idle: this server stops at {when} unless you keep it running (disk kept)."

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "since": audit.isoformat(self.since),
            "stop_at": audit.isoformat(self.stop_at),
            "text": self.text,
            "short": self.short,
            "can_keep_running": self.can_keep_running,
        }


def warning_seconds(rule: CullRule, warn_minutes: int) -> float:
    return min(warn_minutes * 60.0, rule.timeout_seconds / 2)


def notice(
    last_activity: dt.datetime | None, rule: CullRule, warn_minutes: int, now: dt.datetime
) -> Notice | None:
    """The notice for a running server idle since ``last_activity``, or None (not yet)."""
    if last_activity is None or warn_minutes <= 0:
        return None
    since = _utc(last_activity)
    stop_at = since + dt.timedelta(seconds=rule.timeout_seconds)
    if (stop_at - _utc(now)).total_seconds() > warning_seconds(rule, warn_minutes):
        return None
    return Notice(since, stop_at, "idle")


class KeepRunning:
    """The grants' memory (per server: the last activity that was not a grant) and the
    rules; one per hub, made by ``jupyterhub_config.py``."""

    def __init__(
        self,
        communities: CommunitiesConfig,
        rules: Iterable[CullRule],
        clock: Callable[[], dt.datetime] = audit.utcnow,
    ) -> None:
        self.communities = communities
        self.rules: Mapping[str, CullRule] = {r.community: r for r in rules}
        self.clock = clock
        #: (user, server) -> (the activity before the first grant, the last grant's time)
        self._granted: dict[tuple[str, str], tuple[dt.datetime, dt.datetime]] = {}

    def __deepcopy__(self, memo: dict[int, Any]) -> KeepRunning:
        """Itself: traitlets deep-copies config values; one memory for the hub."""
        return self

    def community_of(self, spawner: Any) -> tuple[Any, CullRule] | tuple[None, None]:
        options = getattr(spawner, "last_options", None)
        # the spawner's own communities (what its start used), else the hub's
        communities = getattr(spawner, "communities_config", None) or self.communities
        community = communities.by_id(options.community_id) if options else None
        rule = self.rules.get(community.id) if community else None
        return (community, rule) if community and rule else (None, None)

    def notice_for(self, spawner: Any) -> Notice | None:
        if not getattr(spawner, "ready", False):
            return None
        community, rule = self.community_of(spawner)
        if community is None:
            return None
        return notice(
            spawner.orm_spawner.last_activity, rule, community.idle_warning_minutes, self.clock()
        )

    def grant(
        self, user: str, server: str, last_activity: dt.datetime, limit_hours: float
    ) -> tuple[str, dt.datetime]:
        """A grant now: the audit line's reason and the time to record as the server's last
        activity (exactly: a later look tells a grant from use by it); raises
        `web.HTTPError` (409) with the reason when the bound is passed."""
        now, key = _utc(self.clock()), (user, server)
        last = _utc(last_activity)
        real, granted_at = self._granted.get(key, (last, last))
        if last > granted_at:  # worked since the last grant: the bound starts again
            real = last
        if limit_hours <= 0:
            raise web.HTTPError(409, "This community does not let servers be kept running.")
        if now - real >= dt.timedelta(hours=limit_hours):
            raise web.HTTPError(
                409,
                f"This server has been idle since {format_moment(real)}; it can be kept running "
                f"{limit_hours:g} hours after its last use at most. Use it, or start it again "
                "after it stops (its disk is kept).",
            )
        self._granted[key] = (real, now)
        return f"idle since {audit.isoformat(real)}; kept running at {audit.isoformat(now)}", now


async def keep(handler: BaseHandler, keep: KeepRunning, user: Any, name: str, via: str) -> None:
    """The grant for ``user``'s server ``name`` asked through ``handler`` (the owner's),
    audited; raises `web.HTTPError` with the reason when refused."""
    spawner = user.spawners.get(name) if name in user.orm_user.orm_spawners else None
    if spawner is None or not spawner.ready:
        raise web.HTTPError(409, "That server is not running.")
    community, _ = keep.community_of(spawner)
    if community is None:
        raise web.HTTPError(409, "That server's community has no idle rule.")
    last = spawner.orm_spawner.last_activity or utcnow(with_tz=False)
    fields = {"user": user.name, "server": name, "community": community.id, "via": via}
    try:
        reason, when = keep.grant(user.name, name, last, community.keep_running_hours)
    except web.HTTPError as e:
        audit.record(
            "keep_running",
            audit.Actor("user", user.name),
            outcome="refused",
            reason=e.log_message,
            **fields,
        )
        raise
    now = when.astimezone(dt.UTC).replace(tzinfo=None)  # JupyterHub's naive UTC
    spawner.orm_spawner.last_activity = now
    if user.orm_user.last_activity is None or user.orm_user.last_activity < now:
        user.orm_user.last_activity = now
    handler.db.commit()
    audit.record("keep_running", audit.Actor("user", user.name), reason=reason, **fields)


class KeepRunningHandler(BaseHandler):
    """``POST /hub/keep-running`` with ``server`` (the name; '' the default server), from
    the home page's button."""

    def initialize(self, keep: KeepRunning) -> None:
        self.keep = keep

    @web.authenticated
    async def post(self) -> None:
        await keep(self, self.keep, self.current_user, self.get_body_argument("server", ""), "home")
        self.redirect(self.hub.base_url + "home")


class KeepRunningAPIHandler(APIHandler):
    """``POST /hub/api/users/<name>[/servers/<server>]/keep-running``: the owner's own token
    that may access the server (the notebook server's own token may: JupyterLab's button
    asks through it). Answers ``{"kept_running": true}``, or the refusal's reason."""

    def initialize(self, keep: KeepRunning) -> None:
        self.keep = keep

    async def post(self, user_name: str, server_name: str = "") -> None:
        user = owner_or_refuse(self, user_name, server_name)
        await keep(self, self.keep, user, server_name, "jupyterlab")
        self.finish({"kept_running": True})


def owner_or_refuse(handler: APIHandler, user_name: str, server_name: str) -> Any:
    """The hub user ``user_name`` when ``handler``'s token is theirs and may access their
    server ``server_name``; else the `web.HTTPError` (403) that says why not. An admin's
    token is refused too: nobody keeps or reads another person's server's notices."""
    who = handler.current_user
    if who is None:
        raise web.HTTPError(403, "Missing or invalid token.")
    if getattr(who, "kind", "user") != "user" or who.name != user_name:
        raise web.HTTPError(403, "Only the server's owner may do this.")
    if not has_scope(f"access:servers!server={user_name}/{server_name}", handler.expanded_scopes):
        raise web.HTTPError(403, "This token may not access that server.")
    return who


def keep_running_handlers(keep: KeepRunning) -> list[tuple[str, type, dict[str, Any]]]:
    return [
        (PATH, KeepRunningHandler, {"keep": keep}),
        (r"/api/users/([^/]+)/keep-running", KeepRunningAPIHandler, {"keep": keep}),
        (r"/api/users/([^/]+)/servers/([^/]+)/keep-running", KeepRunningAPIHandler, {"keep": keep}),
    ]
