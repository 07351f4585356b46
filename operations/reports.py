"""A community's spend report: who ran what, how long, at what estimated cost; the top
spenders; the trend against last month. The same figures as the budgets
(`operations.budget.spend_by_server`), so the report, the home page and a refused start agree.

Three ways out: the admin page ``/hub/reports`` (``?community=ID``; ``&format=csv`` downloads
the rows), ``snh report`` (text or ``--csv``), and ``snh report --email``, which sends each
community's report to its ``managers`` through SMTP (`send_report`; settings
``SNH_SMTP_*``), on a schedule with ``--every SECONDS`` (a hub service) or from a monthly
timer. Last month's figure is the same estimate at the end of last month (volumes deleted
since are missing from it, as from this month's).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import io
import smtplib
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from hub_config.communities import (
    DEFAULT_COMMUNITIES_PATH,
    CommunitiesConfig,
    Community,
    PriceTable,
    load_communities,
    load_price_table,
)
from hub_config.settings import OperatorSettings, SmtpSettings
from spawner.region import Regions

from . import audit, mail
from .budget import BudgetGuard, ServerSpend, Spend, Stored, money, spend_by_server
from .cost import month_start

TOP = 5
CSV_FIELDS = (
    "user",
    "server",
    "instance_type",
    "hours",
    "compute_usd",
    "storage_usd",
    "total_usd",
    "complete",
)


@dataclass(frozen=True)
class CommunityReport:
    community: Community
    month: str
    servers: tuple[ServerSpend, ...]  # the most expensive first
    total: Spend
    last_month: Spend
    top_spenders: tuple[tuple[str, float], ...]
    price_note: str

    @property
    def trend(self) -> str:
        """This month so far against the whole of last month."""
        if not self.last_month.usd:
            return "no spend last month to compare with"
        change = (self.total.usd - self.last_month.usd) / self.last_month.usd
        return f"{change:+.0%} against last month's {money(self.last_month.usd)}"

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_FIELDS)
        for s in self.servers:
            writer.writerow(
                [
                    s.user,
                    s.server,
                    s.instance_type,
                    f"{s.hours:.2f}",
                    f"{s.spend.compute_usd:.4f}",
                    f"{s.spend.storage_usd:.4f}",
                    f"{s.spend.usd:.4f}",
                    "yes" if s.spend.complete else "no",
                ]
            )
        return out.getvalue()

    def text(self) -> str:
        """The e-mail's body (and ``snh report``'s output)."""
        c = self.community
        budget = f" of the {money(c.budget_usd_per_month)} budget" if c.budget_usd_per_month else ""
        lines = [
            f"{c.name}: estimated spend in {self.month} so far {money(self.total.usd)}{budget}"
            f" ({self.trend}).",
            f"Prices: {self.price_note}.",
            "",
            "Top spenders:",
            *(f"  {user:<24} {money(usd):>12}" for user, usd in self.top_spenders),
            "",
            f"{'user':<20} {'server':<12} {'type':<12} {'hours':>8} {'estimated':>12}",
            *(
                f"{s.user:<20} {s.server or '(default)':<12} {s.instance_type:<12} "
                f"{s.hours:>8.1f} {money(s.spend.usd):>12}"
                for s in self.servers
            ),
        ]
        return "\n".join(lines) + "\n"


def build_report(
    community: Community,
    records: Iterable[Mapping[str, Any]],
    views: Mapping[str, Any],
    stored: Iterable[Stored],
    communities: CommunitiesConfig,
    prices: PriceTable,
    now: dt.datetime,
) -> CommunityReport:
    records, stored = list(records), list(stored)
    end_of_last = month_start(now) - dt.timedelta(microseconds=1)
    # last month: nothing of this month's instances' current runs (they began this month
    # or are counted up to the end of last month by their runs)
    this = spend_by_server(records, views, stored, communities, prices, now)
    last = spend_by_server(records, views, stored, communities, prices, end_of_last)
    servers = sorted(
        (s for s in this.values() if s.community == community.id and (s.hours or s.spend.usd)),
        key=lambda s: (-s.spend.usd, s.user, s.server),
    )
    total, last_total = Spend(), Spend()
    per_user: dict[str, float] = defaultdict(float)
    for s in servers:
        total.add(s.spend)
        per_user[s.user] += s.spend.usd
    for s in last.values():
        if s.community == community.id:
            last_total.add(s.spend)
    top = sorted(per_user.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
    return CommunityReport(
        community=community,
        month=f"{month_start(now):%B %Y}",
        servers=tuple(servers),
        total=total,
        last_month=last_total,
        top_spenders=tuple(top),
        price_note=prices.note,
    )


def report_message(report: CommunityReport, sender: str) -> EmailMessage:
    """The e-mail to the community's managers: the text, and the rows as a CSV file."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(report.community.managers)
    message["Subject"] = (
        f"Notebook spend, {report.community.name}, {report.month}: {money(report.total.usd)}"
    )
    message.set_content(report.text())
    message.add_attachment(
        report.csv().encode(),
        maintype="text",
        subtype="csv",
        filename=f"{report.community.id}-{report.month.replace(' ', '-').lower()}.csv",
    )
    return message


def send_report(report: CommunityReport, smtp: SmtpSettings) -> bool:
    """Send ``report`` to its managers (blocking: call it in a thread); False when the
    community has no managers. Raises `smtplib.SMTPException` or `OSError` naming the
    failure (the caller reports it with the community's id)."""
    if not report.community.managers:
        return False
    mail.send(report_message(report, smtp.sender), smtp)
    return True


def _parser(settings: OperatorSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snh report",
        description="Each community's spend this month: text, CSV, or an e-mail to its managers.",
    )
    parser.add_argument("--community", action="append", help="a community id (repeatable)")
    parser.add_argument("--csv", action="store_true", help="print the rows as CSV")
    parser.add_argument("--email", action="store_true", help="send each to its managers")
    parser.add_argument("--every", type=float, metavar="SECONDS", help="again and again")
    parser.add_argument("--hub-id", default=settings.hub_id)
    parser.add_argument("--communities", metavar="FILE")
    parser.add_argument("--endpoint-url", default=settings.aws_endpoint_url)
    return parser


async def run(argv: list[str], settings: OperatorSettings) -> int:
    """``snh report``: see the module docstring. Exit status 1 when a report could not be
    sent (each failure named with its community and the SMTP error)."""
    args = _parser(settings).parse_args(argv)
    if args.email and settings.smtp is None:
        print("snh report: --email needs SNH_SMTP_HOST (and SNH_SMTP_FROM)", file=sys.stderr)
        return 2
    path = args.communities or settings.communities_file or DEFAULT_COMMUNITIES_PATH
    communities = load_communities(path)
    chosen = [c for c in communities.communities if not args.community or c.id in args.community]
    guard = BudgetGuard(
        regions=Regions(args.endpoint_url),
        hub_id=args.hub_id,
        communities=communities,
        prices=load_price_table(),
        audit_log=settings.audit_log,
    )
    status = 0
    while True:
        now = audit.utcnow()
        since = month_start(month_start(now) - dt.timedelta(days=1))  # last month's start
        records, views, stored = await guard.inputs(since)
        for community in chosen:
            report = build_report(community, records, views, stored, communities, guard.prices, now)
            if not args.email:
                print(report.csv() if args.csv else report.text())
                continue
            try:
                sent = await asyncio.to_thread(send_report, report, settings.smtp)
            except (smtplib.SMTPException, OSError) as e:
                print(f"snh report: {community.id}: not sent: {e}", file=sys.stderr)
                status = 1
                continue
            to = ", ".join(community.managers) if sent else "nobody (no managers)"
            print(f"{community.id}: {report.month} report sent to {to}")
        if not args.every:
            return status
        await asyncio.sleep(args.every)


def main(argv: list[str], settings: OperatorSettings) -> int:
    return asyncio.run(run(argv, settings))
