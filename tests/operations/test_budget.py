"""Budget arithmetic (`operations.budget`): what a month's spend is, checked against figures
computed by hand and, with hypothesis, against a direct sum over runs that straddle month
boundaries, stop and start again, and change instance type; and the rule a start follows."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub_config import load_communities
from hub_config.communities import DEFAULT_INSTANCE_TYPES_PATH, PriceTable, load_price_table
from operations.budget import Spend, Stored, spend_by_owner, storage_usd, verdict
from spawner.naming import TAG_COMMUNITY, TAG_USER
from spawner.poller import InstanceView

COMMUNITIES = load_communities("hub_config/communities.yaml")
AD = COMMUNITIES.communities[0]  # ad-portal: t3.large 0.0832 $/h, t3.xlarge 0.1664 $/h
PRICES = PriceTable("2024-06-01", "test list prices", ebs_gb_month=0.08, snapshot_gb_month=0.05)
NOW = dt.datetime(2026, 3, 15, 12, 0, tzinfo=dt.UTC)  # March: 744 hours
MARCH = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def line(action: str, when: dt.datetime, instance: str = "i-1", **fields) -> dict:
    return {
        "time": when.isoformat().replace("+00:00", "Z"),
        "action": action,
        "instance_id": instance,
        "user": "alice",
        "community": AD.id,
        **fields,
    }


def test_a_hand_computed_month() -> None:
    """alice: a t3.large from 28 Feb 22:00 to 1 Mar 02:00 (2 h in March), a t3.xlarge from
    10 Mar 09:00 to 17:00 (8 h), and a 50 GB home volume made on 5 Mar plus a 30 GB root
    volume made in February. bob: nothing ran, one 20 GB snapshot from 14 Mar 12:00."""
    records = [
        line("launch", dt.datetime(2026, 2, 28, 22, tzinfo=dt.UTC), instance_type="t3.large"),
        line("stop", dt.datetime(2026, 3, 1, 2, tzinfo=dt.UTC)),
        line("resume", dt.datetime(2026, 3, 10, 9, tzinfo=dt.UTC), instance_type="t3.xlarge"),
        line("stop", dt.datetime(2026, 3, 10, 17, tzinfo=dt.UTC)),
    ]
    stored = [
        Stored("alice", AD.id, 50, dt.datetime(2026, 3, 5, tzinfo=dt.UTC)),
        Stored("alice", AD.id, 30, dt.datetime(2026, 2, 20, tzinfo=dt.UTC)),
        Stored("bob", AD.id, 20, dt.datetime(2026, 3, 14, 12, tzinfo=dt.UTC), snapshot=True),
    ]
    spends = spend_by_owner(records, {}, stored, COMMUNITIES, PRICES, NOW)
    alice = spends[("alice", AD.id)]
    assert alice.compute_usd == pytest.approx(2 * 0.0832 + 8 * 0.1664)  # 1.498
    # 50 GB x 10.5 days + 30 GB x 14.5 days, of a 31-day month, at $0.08
    assert alice.storage_usd == pytest.approx((50 * 10.5 + 30 * 14.5) / 31 * 0.08)
    bob = spends[("bob", AD.id)]
    assert bob.compute_usd == 0 and bob.storage_usd == pytest.approx(20 * 1 / 31 * 0.05)
    total = spends[("", AD.id)]
    assert total.usd == pytest.approx(alice.usd + bob.usd)


def test_a_running_instance_counts_from_ec2s_launch_time() -> None:
    view = InstanceView(
        "i-2",
        "running",
        "t3.large",
        {TAG_USER: "carol", TAG_COMMUNITY: AD.id},
        launch_time=NOW - dt.timedelta(hours=3),
    )
    spends = spend_by_owner([], {"i-2": view}, [], COMMUNITIES, PRICES, NOW)
    assert spends[("carol", AD.id)].compute_usd == pytest.approx(3 * 0.0832)


_hours = st.integers(min_value=-24 * 40, max_value=24 * 14)


@settings(max_examples=200, deadline=None)
@given(
    periods=st.lists(
        st.tuples(_hours, st.integers(min_value=1, max_value=24 * 10), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_compute_spend_is_the_sum_of_running_hours_in_the_month(periods) -> None:
    """Runs anywhere from 40 days before to 14 days after the start of March, one after the
    other (a stop closes each), each on one of two types (a resize between runs): the spend
    is each run's hours inside [1 March, now], times its type's price."""
    records, expected, cursor = [], 0.0, MARCH - dt.timedelta(days=41)
    for offset, length, big in periods:
        start = max(MARCH + dt.timedelta(hours=offset), cursor)
        end = start + dt.timedelta(hours=length)
        cursor = end + dt.timedelta(hours=1)
        if start >= NOW:
            break
        kind = "t3.xlarge" if big else "t3.large"
        records += [line("resume", start, instance_type=kind), line("stop", min(end, NOW))]
        inside = (min(end, NOW) - max(start, MARCH)).total_seconds() / 3600
        expected += max(0.0, inside) * (0.1664 if big else 0.0832)
    spends = spend_by_owner(records, {}, [], COMMUNITIES, PRICES, NOW)
    got = spends.get(("alice", AD.id), Spend()).compute_usd
    assert got == pytest.approx(expected, abs=1e-9)


@given(
    days_before=st.floats(min_value=0, max_value=60, allow_nan=False),
    size=st.integers(min_value=1, max_value=16384),
)
def test_storage_counts_only_this_months_part(days_before: float, size: int) -> None:
    since = NOW - dt.timedelta(days=days_before)
    usd = storage_usd(Stored("alice", AD.id, size, since), PRICES, NOW)
    days = (NOW - max(since, MARCH)).total_seconds() / 86400
    assert usd == pytest.approx(size * 0.08 * days / 31)
    assert usd <= size * 0.08  # never more than a whole month


def with_budgets(**keys) -> object:
    return dataclasses.replace(AD, managers=("manager@example.org",), **keys)


def test_over_the_community_budget_refuses_naming_budget_spend_and_who_to_ask() -> None:
    community = with_budgets(budget_usd_per_month=100.0)
    spends = {("", AD.id): Spend(compute_usd=100.0), ("alice", AD.id): Spend(compute_usd=1.0)}
    refused = verdict("alice", community, spends, PRICES)
    assert refused.level == "over"
    assert "$100.00 of the monthly budget of" in refused.message
    assert "manager@example.org" in refused.message
    assert "list prices of 2024-06-01" in refused.message


def test_a_members_own_cap_refuses_them_and_not_the_others() -> None:
    community = with_budgets(user_budget_usd_per_month=10.0, budget_usd_per_month=1000.0)
    spends = {
        ("", AD.id): Spend(compute_usd=10.5),
        ("alice", AD.id): Spend(compute_usd=10.5),
    }
    assert verdict("alice", community, spends, PRICES).level == "over"
    assert "your own monthly budget" in verdict("alice", community, spends, PRICES).message
    assert verdict("bob", community, spends, PRICES).level == "ok"


@pytest.mark.parametrize(
    ("spent", "level"), [(79.99, "ok"), (80.0, "warn"), (99.99, "warn"), (100.0, "over")]
)
def test_the_warning_starts_at_80_percent(spent: float, level: str) -> None:
    community = with_budgets(budget_usd_per_month=100.0)
    result = verdict("alice", community, {("", AD.id): Spend(compute_usd=spent)}, PRICES)
    assert result.level == level
    if level == "warn":
        assert f"({spent / 100:.0%})" in result.message


def test_an_incomplete_figure_says_at_least() -> None:
    community = with_budgets(budget_usd_per_month=10.0)
    spends = {("", AD.id): Spend(compute_usd=9.0, complete=False)}
    assert "At least $9.00" in verdict("alice", community, spends, PRICES).message


def test_the_shipped_price_table_has_storage_prices_and_its_date() -> None:
    table = load_price_table(DEFAULT_INSTANCE_TYPES_PATH)
    assert table.ebs_gb_month and table.snapshot_gb_month and table.as_of
    assert table.as_of in table.note


def test_a_run_that_began_before_the_records_is_marked_incomplete() -> None:
    """A stop whose start is older than the log the budgets read: the hours from the 1st
    to the stop cannot be counted exactly, so the figure says "at least"."""
    records = [line("stop", dt.datetime(2026, 3, 3, tzinfo=dt.UTC))]
    spends = spend_by_owner(records, {}, [], COMMUNITIES, PRICES, NOW)
    assert not spends[("alice", AD.id)].complete
