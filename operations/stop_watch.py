"""Warnings before a server is stopped (an idle cull, or a spent budget), and budget stops.

A user is told where they are working, before the stop, by three ways that say the same:

- **the hub's home page**: a notice under the server, with Keep running for an idle cull
  (template variable ``snh_stop_notice``, `NoticeVar`);
- **JupyterLab**: the images' ``snh-stop-notice`` extension asks the notebook server, which
  asks ``GET /hub/api/users/<name>/[servers/<server>/]stop-notice`` with its own token
  (`StopNoticeAPIHandler`), and shows JupyterLab's own notification with a Keep running
  button (images/shared/notebook_stop_notice.py);
- **e-mail**, once per warning, when the hub has SMTP settings (``SNH_SMTP_*``) and the
  user's Synapse e-mail is known (their auth state).

Each warning is an audit line (``stop_warning``: kind, stop time, e-mailed or not).

When: JupyterHub polls every running server (``Spawner.poll_interval``); each poll of a
ready server calls `StopWatch.check` (``EC2Spawner.running_checks``), which looks in the
background: the hub already visits every server that often, and a server that is not
running needs no watch.

**Budget stops** (community key ``stop_over_budget``): a running server whose community's
budget, or its owner's cap in it, is spent (`operations.budget.verdict`) gets a ``budget``
notice at the first check that sees it; when the same warning time as an idle cull
(`operations.keep_running.warning_seconds`) has passed, the hub stops it (its disk kept) as
JupyterHub's own stop does: the proxy route goes, then ``User.stop``. Keep running does not
apply. The notice's start lives in memory: after a hub restart the warning starts again,
which stops later, never earlier, than promised.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import smtplib
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from jupyterhub.apihandlers.base import APIHandler

from hub_config.settings import SmtpSettings

from . import audit, mail
from .budget import BudgetGuard, verdict
from .home_page import format_moment
from .keep_running import KeepRunning, Notice, owner_or_refuse, warning_seconds

log = logging.getLogger(__name__)

#: The template variable the home page reads.
TEMPLATE_VAR = "snh_stop_notice"

Key = tuple[str, str]


def _key(spawner: Any) -> Key:
    return (spawner.user.name, spawner.name)


def _started(spawner: Any) -> Any:
    """When this run of the server started (JupyterHub's record), to tell runs apart."""
    return getattr(getattr(spawner, "orm_spawner", None), "started", None)


def warning_message(
    notice: Notice, *, to: str, user: str, server: str, hub_url: str, sender: str
) -> EmailMessage:
    """The e-mail of one warning: what will happen when, and what the user can do."""
    label = f"Your server {server!r}" if server else "Your server"
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = f"{label} will be stopped at {format_moment(notice.stop_at)}" + (
        " (idle)" if notice.kind == "idle" else " (budget)"
    )
    home = hub_url.rstrip("/") + "/hub/home"
    act = (
        f"To keep it running, use it, or press Keep running on {home} or in JupyterLab."
        if notice.can_keep_running
        else f"Save your work before then. The notice is on {home}."
    )
    message.set_content(
        f"Hello {user},\n\n{label} on the notebook hub: {notice.text}\n\n{act}\n\n"
        "Stopping keeps the server's disk: start it again from the hub's home page.\n"
    )
    return message


class StopWatch:
    """One per hub (``jupyterhub_config.py``): the notices of every running server, the
    e-mails, and the budget stops; see the module docstring."""

    def __init__(
        self,
        keep: KeepRunning,
        *,
        guard: BudgetGuard | None = None,
        smtp: SmtpSettings | None = None,
        hub_url: str = "",
        clock: Callable[[], dt.datetime] = audit.utcnow,
    ) -> None:
        self.keep, self.guard, self.smtp, self.hub_url = keep, guard, smtp, hub_url
        self.clock = clock
        #: servers over a budget: when it was first seen, which budget, and the server's
        #: start then (a later start of the same server is another run: a new warning)
        self._over: dict[Key, tuple[dt.datetime, str, Any]] = {}
        #: the warning each server was last given (kind, stop time)
        self._warned: dict[Key, tuple[str, dt.datetime]] = {}
        self._checks: dict[Key, asyncio.Future[None]] = {}

    def __deepcopy__(self, memo: dict[int, Any]) -> StopWatch:
        """Itself: traitlets deep-copies config values; one memory for the hub."""
        return self

    # -- what the pages ask --------------------------------------------------------------

    def notice_for(self, spawner: Any) -> Notice | None:
        """The running server's coming stop (a budget stop first), or None."""
        if not getattr(spawner, "ready", False):
            return None
        community, rule = self.keep.community_of(spawner)
        if community is None:
            return None
        over = self._over.get(_key(spawner))
        if over is not None and over[2] == _started(spawner):
            since, reason, _ = over
            wait = warning_seconds(rule, community.idle_warning_minutes)
            return Notice(since, since + dt.timedelta(seconds=wait), "budget", reason)
        return self.keep.notice_for(spawner)

    # -- the poll hook -------------------------------------------------------------------

    def check(self, spawner: Any) -> None:
        """Look at ``spawner`` in the background (one look per server at a time): called by
        every poll of a running server, which must not wait for e-mail or EC2."""
        key = _key(spawner)
        running = self._checks.get(key)
        if running is not None and not running.done():
            return
        task = self._checks[key] = asyncio.ensure_future(self._check(spawner))
        # a finished look is not kept (nor the spawner it holds): users and servers go
        task.add_done_callback(
            lambda done: self._checks.pop(key) if self._checks.get(key) is done else None
        )

    async def _check(self, spawner: Any) -> None:
        key = _key(spawner)
        try:
            await self._budget(spawner)
            found = self.notice_for(spawner)
            if found is None:
                self._warned.pop(key, None)
                return
            if self._warned.get(key) != (found.kind, found.stop_at):
                self._warned[key] = (found.kind, found.stop_at)
                await self._warn(spawner, found)
            if found.kind == "budget" and self.clock() >= found.stop_at:
                await self._stop(spawner, found)
        except Exception:  # a look must never break the poll that asked for it
            log.exception("stop watch: %s/%s: the look failed", *key)

    async def _budget(self, spawner: Any) -> None:
        key = _key(spawner)
        community, rule = self.keep.community_of(spawner)
        if self.guard is None or community is None or not community.stop_over_budget:
            self._over.pop(key, None)
            return
        # fresh enough that the stop comes near its promised time, cached between servers
        wait = warning_seconds(rule, community.idle_warning_minutes)
        spends = await self.guard.spends(min(self.guard.cache_seconds, max(5.0, wait / 4)))
        found = verdict(spawner.user.name, community, spends, self.guard.prices)
        known = self._over.get(key)
        if known is not None and known[2] != _started(spawner):  # from an earlier run
            del self._over[key]
            self._warned.pop(key, None)
        if found.level == "over":
            self._over.setdefault(key, (self.clock(), found.reason, _started(spawner)))
        elif self._over.pop(key, None) is not None:
            log.info("stop watch: %s/%s: no longer over budget", *key)

    async def _warn(self, spawner: Any, found: Notice) -> None:
        user, server = _key(spawner)
        emailed, error = False, None
        if self.smtp is not None:
            to = str((await spawner.user.get_auth_state() or {}).get("email") or "")
            if to:
                message = warning_message(
                    found,
                    to=to,
                    user=user,
                    server=server,
                    hub_url=self.hub_url,
                    sender=self.smtp.sender,
                )
                try:
                    await asyncio.to_thread(mail.send, message, self.smtp)
                    emailed = True
                except (smtplib.SMTPException, OSError) as e:
                    error = f"e-mail to the owner through {self.smtp.host}: {e}"
                    log.warning("stop watch: %s/%s: %s", user, server, error)
        community, _ = self.keep.community_of(spawner)
        audit.record(
            "stop_warning",
            audit.HUB,
            user=user,
            server=server,
            community=community.id if community else None,
            kind=found.kind,
            stop_at=audit.isoformat(found.stop_at),
            emailed=emailed,
            error=error,
            reason=found.reason or None,
        )

    async def _stop(self, spawner: Any, found: Notice) -> None:
        """Stop as JupyterHub's own stop does (``BaseHandler.stop_single_user``): the route
        first, so nobody reaches a server on its way down, then ``User.stop``."""
        key = _key(spawner)
        if spawner.pending or not spawner.ready:
            return
        user = spawner.user
        community, _ = self.keep.community_of(spawner)
        audit.record(
            "budget_stop",
            audit.HUB,
            user=user.name,
            server=spawner.name,
            community=community.id if community else None,
            reason=found.reason,
        )
        proxy = user.settings.get("proxy")

        async def stop() -> None:
            try:
                if proxy is not None:
                    await proxy.delete_user(user, spawner.name)
                await user.stop(spawner.name)
            finally:
                spawner._stop_future = None
                spawner._stop_pending = False

        # as stop_single_user: pending before anything async, and the stop findable by a
        # delete that comes meanwhile (it waits for it instead of racing it)
        spawner._stop_pending = True
        spawner._stop_future = asyncio.ensure_future(stop())
        await spawner._stop_future
        self._over.pop(key, None)
        self._warned.pop(key, None)
        if self.guard is not None:
            self.guard.forget()


class NoticeVar:
    """The home page's template variable: called with the current user, returns the
    function the page calls per server (a `Notice` or None)."""

    def __init__(self, watch: StopWatch) -> None:
        self.watch = watch

    def __call__(self, user: Any) -> Callable[[Any], Notice | None]:
        def found(spawner: Any) -> Notice | None:
            try:
                return self.watch.notice_for(spawner)
            except Exception:  # the home page must render
                log.exception("stop watch: the home page's notice failed")
                return None

        return found


class StopNoticeAPIHandler(APIHandler):
    """``GET /hub/api/users/<name>[/servers/<server>]/stop-notice``: the server's notice as
    JSON (``{"notice": null}`` when none), for the owner's tokens that may access the server
    (the notebook server's own does). Asking is not activity."""

    def initialize(self, watch: StopWatch) -> None:
        self.watch = watch

    async def get(self, user_name: str, server_name: str = "") -> None:
        user = owner_or_refuse(self, user_name, server_name)
        known = server_name in user.orm_user.orm_spawners
        found = self.watch.notice_for(user.spawners[server_name]) if known else None
        self.finish({"notice": found.to_json() if found else None})


def stop_watch_handlers(watch: StopWatch) -> list[tuple[str, type, dict[str, Any]]]:
    return [
        (r"/api/users/([^/]+)/stop-notice", StopNoticeAPIHandler, {"watch": watch}),
        (r"/api/users/([^/]+)/servers/([^/]+)/stop-notice", StopNoticeAPIHandler, {"watch": watch}),
    ]
