"""The demo's seeded month (`localcloud.demo_history`): bob's earlier run, read by the budgets
as any run is, puts him past 80 % of the shipped NF Open Science per-member cap, so that the
demo's spawn form and home page warn him; it stays within the month, and is written once."""

from __future__ import annotations

import datetime as dt

import pytest

from hub_config import DEFAULT_COMMUNITIES_PATH, load_communities
from hub_config.communities import load_price_table
from localcloud import demo_history
from operations.budget import WARN_AT, spend_by_owner, verdict

COMMUNITIES = load_communities(DEFAULT_COMMUNITIES_PATH)
PRICES = load_price_table()


@pytest.mark.parametrize("day", [2, 15, 31])
def test_the_demo_warns_bob_and_nobody_else(day: int) -> None:
    now = dt.datetime(2026, 12, day, 12, tzinfo=dt.UTC)
    spends = spend_by_owner(
        demo_history.history_lines(now, "us-east-1"), {}, [], COMMUNITIES, PRICES, now
    )
    nf = COMMUNITIES.by_id("nf-osc")
    assert nf is not None and nf.user_budget_usd_per_month
    bob = verdict("bob", nf, spends, PRICES)
    assert bob.level == "warn" and "nf-managers@example.org" in bob.message
    assert spends[("bob", "nf-osc")].usd >= WARN_AT * nf.user_budget_usd_per_month
    assert verdict("alice", nf, spends, PRICES).level == "ok"


def test_the_run_never_reaches_into_last_month() -> None:
    now = dt.datetime(2026, 12, 1, 3, tzinfo=dt.UTC)
    start, end = (
        dt.datetime.fromisoformat(x["time"]) for x in demo_history.history_lines(now, "r")
    )
    assert start >= dt.datetime(2026, 12, 1, tzinfo=dt.UTC) and end <= now


def test_it_is_written_once(tmp_path) -> None:
    log = tmp_path / "hub" / "audit.log"
    now = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    assert demo_history.seed(log, now, "us-east-1")
    assert not demo_history.seed(log, now, "us-east-1")
    assert len(log.read_text().splitlines()) == 2
