"""A month's history for the demo: bob has already spent most of his monthly budget in the NF
Open Science community, so that ``make demo`` shows the budgets at work (his spawn form and
home page warn, from 80 % of his ``user_budget_usd_per_month``) without anyone waiting for
money to be spent.

It is written as the hub writes it: two audit lines (``launch`` and ``stop``, the fields of
``operations.audit.FIELDS``) for an instance that ran earlier this month, which the budgets'
estimate (``operations.budget``) counts like any other run. Only the demo writes it, once per
state directory; tests never see it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from spawner.naming import DEFAULT_HUB_ID

USER, COMMUNITY, INSTANCE_TYPE = "bob", "nf-osc", "r5.xlarge"
#: Hours of r5.xlarge (about $0.25/h): 85 % of the demo community's $5.00 per-user cap.
HOURS = 17.0
INSTANCE_ID = "i-0demo0history0b0b"


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def history_lines(now: dt.datetime, region: str) -> list[dict[str, object]]:
    """The run, ending an hour ago and starting no earlier than this month (in a month's
    first hours it is shorter, and the warning waits for bob's own use)."""
    month = now.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = max(month, now - dt.timedelta(hours=1))
    start = max(month, end - dt.timedelta(hours=HOURS))
    common = {
        "actor": "user",
        "actor_name": USER,
        "hub_id": DEFAULT_HUB_ID,
        "instance_id": INSTANCE_ID,
        "region": region,
        "user": USER,
        "server": "",
        "community": COMMUNITY,
        "instance_type": INSTANCE_TYPE,
        "outcome": "ok",
    }
    return [
        {"time": _iso(start), "action": "launch", **common},
        {"time": _iso(end), "action": "stop", **common},
    ]


def seed(audit_log: Path, now: dt.datetime, region: str) -> bool:
    """Write the history unless the log has lines already (a demo run before); whether it
    wrote."""
    if audit_log.exists() and audit_log.stat().st_size:
        return False
    audit_log.parent.mkdir(parents=True, exist_ok=True)
    with audit_log.open("a", encoding="utf-8") as out:
        for line in history_lines(now, region):
            out.write(json.dumps(line, sort_keys=True) + "\n")
    return True
