"""``/hub/reports``: each community's spend report (`operations.reports`) for admins and
operators (the ``admin-ui`` scope, as the servers overview), as a page or, with
``?format=csv``, the rows as a CSV download. The hub's own `BudgetGuard` gathers the figures,
so the page, the budgets and the home page agree."""

from __future__ import annotations

import datetime as dt
from typing import Any

from jupyterhub.handlers.base import BaseHandler
from jupyterhub.scopes import needs_scope
from tornado import web

from . import audit
from .budget import BudgetGuard
from .cost import month_start
from .reports import build_report


class ReportsHandler(BaseHandler):
    def initialize(self, guard: BudgetGuard) -> None:
        self.guard = guard

    @web.authenticated
    @needs_scope("admin-ui")
    async def get(self) -> None:
        communities = self.guard.communities
        chosen = self.get_argument("community", "")
        community = communities.by_id(chosen) if chosen else None
        if chosen and community is None:
            raise web.HTTPError(404, f"No community {chosen!r} in the communities file.")
        report = None
        if community is not None:
            now = audit.utcnow()
            since = month_start(month_start(now) - dt.timedelta(days=1))
            records, views, stored = await self.guard.inputs(since)
            report = build_report(
                community, records, views, stored, communities, self.guard.prices, now
            )
            if self.get_argument("format", "") == "csv":
                name = f"{community.id}-{report.month.replace(' ', '-').lower()}.csv"
                self.set_header("Content-Type", "text/csv; charset=utf-8")
                self.set_header("Content-Disposition", f'attachment; filename="{name}"')
                self.finish(report.csv())
                return
        html = await self.render_template(
            "reports.html", communities=communities.communities, report=report
        )
        self.finish(html)


def reports_handler(guard: BudgetGuard) -> tuple[str, type, dict[str, Any]]:
    """The ``c.JupyterHub.extra_handlers`` entry of the page."""
    return (r"/reports", ReportsHandler, {"guard": guard})
