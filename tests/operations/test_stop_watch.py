"""The warnings before a stop and the budget stops (`operations.stop_watch`), on their own:
a real SMTP server on loopback receives the e-mails; the spawner, user and proxy are
stand-ins that record what the hub would do. The whole path with a real hub is
``tests/integration/test_keep_running.py`` (idle) and ``test_budget.py`` (budget stop)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from email import message_from_bytes, policy
from types import SimpleNamespace
from typing import Any

import pytest

from hub_config import DEFAULT_COMMUNITIES_PATH, load_communities
from hub_config.communities import CommunitiesConfig, load_price_table
from hub_config.culling import CullRule
from hub_config.settings import SmtpSettings
from operations import audit, stop_watch
from operations.budget import Spend
from operations.keep_running import KeepRunning
from operations.stop_watch import StopWatch
from tests.smtp_inbox import smtp_inbox

T0 = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
COMMUNITY = "ad-portal"
RULE = CullRule(community=COMMUNITY, timeout_seconds=3600, max_age_seconds=None)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def communities(**changes: Any) -> CommunitiesConfig:
    loaded = load_communities(DEFAULT_COMMUNITIES_PATH)
    changed = [
        dataclasses.replace(c, **changes) if c.id == COMMUNITY else c for c in loaded.communities
    ]
    return dataclasses.replace(loaded, communities=tuple(changed))


class User:
    def __init__(self, name: str = "alice", email: str = "alice@example.org") -> None:
        self.name, self.email, self.stopped = name, email, []
        self.proxy = SimpleNamespace(deleted=[])

        async def delete_user(user: Any, server: str) -> None:
            self.proxy.deleted.append((user.name, server))

        self.proxy.delete_user = delete_user
        self.settings = {"proxy": self.proxy}

    async def get_auth_state(self) -> dict[str, Any]:
        return {"email": self.email, "access_token": "not-for-mail"}

    async def stop(self, name: str) -> None:
        self.stopped.append(name)


def spawner(user: User, last_activity: dt.datetime, name: str = "") -> Any:
    return SimpleNamespace(
        user=user,
        name=name,
        ready=True,
        pending=None,
        last_options=SimpleNamespace(community_id=COMMUNITY),
        orm_spawner=SimpleNamespace(
            last_activity=last_activity.replace(tzinfo=None), started=T0.replace(tzinfo=None)
        ),
    )


class Guard:
    """What `StopWatch` asks of `operations.budget.BudgetGuard`."""

    cache_seconds = 60.0

    def __init__(self, usd: float) -> None:
        self.usd, self.prices, self.forgotten = usd, load_price_table(), 0

    async def spends(self, max_age: float | None = None) -> dict[Any, Spend]:
        spend = Spend(compute_usd=self.usd)
        return {("alice", COMMUNITY): spend, ("", COMMUNITY): spend}

    def forget(self) -> None:
        self.forgotten += 1


@pytest.fixture
def lines(monkeypatch) -> list[tuple[str, dict[str, Any]]]:
    recorded: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(audit, "record", lambda action, actor, **f: recorded.append((action, f)))
    return recorded


def watch_for(clock: list[dt.datetime], config: CommunitiesConfig, **kwargs: Any) -> StopWatch:
    keep = KeepRunning(config, [RULE], clock=lambda: clock[0])
    return StopWatch(keep, clock=lambda: clock[0], hub_url="https://hub.example.org", **kwargs)


async def look(watch: StopWatch, server: Any) -> None:
    watch.check(server)
    await watch._checks[(server.user.name, server.name)]


def test_an_idle_warning_is_e_mailed_once_per_warning_and_audited(lines) -> None:
    clock = [at(30)]
    user = User()
    server = spawner(user, T0)
    with smtp_inbox() as (inbox, port):
        smtp = SmtpSettings(host="127.0.0.1", port=port, tls="none", sender="hub@example.org")
        watch = watch_for(clock, communities(), smtp=smtp)

        async def scenario() -> None:
            await look(watch, server)  # 30 idle minutes: no warning yet
            assert inbox.envelopes == [] and lines == []
            clock[0] = at(51)
            await look(watch, server)
            await look(watch, server)  # the same warning: no second e-mail
            assert len(inbox.envelopes) == 1
            server.orm_spawner.last_activity = at(52).replace(tzinfo=None)  # used again
            clock[0] = at(60)
            await look(watch, server)
            clock[0] = at(103)
            await look(watch, server)  # a new idle period's warning

        asyncio.run(scenario())
    assert len(inbox.envelopes) == 2
    first = message_from_bytes(inbox.envelopes[0].content, policy=policy.default)
    assert first["To"] == "alice@example.org" and first["From"] == "hub@example.org"
    assert first["Subject"] == "Your server will be stopped at 7 December 2026, 13:00 UTC (idle)"
    body = first.get_content()
    assert "Keep running on https://hub.example.org/hub/home" in body
    assert "not-for-mail" not in inbox.envelopes[0].content.decode()
    assert [(a, f["kind"], f["emailed"], f["stop_at"]) for a, f in lines] == [
        ("stop_warning", "idle", True, "2026-12-07T13:00:00.000Z"),
        ("stop_warning", "idle", True, "2026-12-07T13:52:00.000Z"),
    ]


def test_an_smtp_failure_is_audited_and_the_warning_still_shows(lines) -> None:
    clock = [at(55)]
    server = spawner(User(), T0)
    with smtp_inbox() as (_, port):
        pass  # nobody listens there now
    smtp = SmtpSettings(host="127.0.0.1", port=port, tls="none")
    watch = watch_for(clock, communities(), smtp=smtp)
    asyncio.run(look(watch, server))
    ((action, fields),) = lines
    assert action == "stop_warning" and fields["emailed"] is False
    assert "through 127.0.0.1: " in fields["error"]
    assert watch.notice_for(server) is not None


def test_a_community_without_stop_over_budget_never_stops_a_running_server(lines) -> None:
    clock = [at(1)]
    user = User()
    server = spawner(user, at(1))
    config = communities(budget_usd_per_month=5.0)
    watch = watch_for(clock, config, guard=Guard(usd=50.0))
    asyncio.run(look(watch, server))
    assert watch.notice_for(server) is None and user.stopped == [] and lines == []


def test_over_budget_warns_then_stops_as_the_hub_does_after_the_warning_time(lines) -> None:
    clock = [at(1)]
    user = User()
    server = spawner(user, at(1))  # in use: budget stops do not wait for idleness
    config = communities(
        budget_usd_per_month=5.0,
        managers=("ad-managers@example.org",),
        stop_over_budget=True,
        idle_warning_minutes=10,
    )
    guard = Guard(usd=4.0)
    watch = watch_for(clock, config, guard=guard)

    async def scenario() -> None:
        await look(watch, server)  # 80 %: starts are warned, nothing stops
        assert watch.notice_for(server) is None
        guard.usd = 5.5
        clock[0] = at(2)
        await look(watch, server)
        found = watch.notice_for(server)
        assert found is not None and found.kind == "budget" and not found.can_keep_running
        assert found.stop_at == at(12)
        assert "$5.50 of the monthly budget of" in found.text
        assert "ad-managers@example.org" in found.text
        clock[0] = at(11)
        await look(watch, server)
        assert user.stopped == []
        clock[0] = at(12)
        await look(watch, server)

    asyncio.run(scenario())
    assert user.proxy.deleted == [("alice", "")] and user.stopped == [""]
    assert guard.forgotten == 1
    assert [a for a, _ in lines] == ["stop_warning", "budget_stop"]
    assert lines[0][1]["kind"] == "budget" and lines[0][1]["emailed"] is False
    assert "ad-managers@example.org" in lines[1][1]["reason"]


def test_a_budget_raised_in_time_cancels_the_stop(lines) -> None:
    clock = [at(1)]
    user = User()
    server = spawner(user, at(1))
    config = communities(budget_usd_per_month=5.0, stop_over_budget=True)
    guard = Guard(usd=6.0)
    watch = watch_for(clock, config, guard=guard)

    async def scenario() -> None:
        await look(watch, server)
        assert watch.notice_for(server).kind == "budget"
        guard.usd = 1.0  # a manager raised the budget (or a new month began)
        clock[0] = at(20)
        await look(watch, server)

    asyncio.run(scenario())
    assert watch.notice_for(server) is None and user.stopped == []


def test_the_home_page_variable_survives_a_broken_look() -> None:
    watch = watch_for([T0], communities())
    broken = SimpleNamespace(ready=True)  # no user, no options
    assert stop_watch.NoticeVar(watch)(None)(broken) is None


def test_a_later_run_over_budget_gets_a_warning_of_its_own(lines) -> None:
    """The watch's memory of a run that ended (stopped by its owner before the budget stop)
    does not stop the server's next run at once: that run is warned and given its time."""
    clock = [at(1)]
    user = User()
    server = spawner(user, at(1))
    config = communities(budget_usd_per_month=5.0, stop_over_budget=True)
    watch = watch_for(clock, config, guard=Guard(usd=6.0))

    async def scenario() -> None:
        await look(watch, server)  # warned: stop at 1 + 10 minutes
        server.ready = False  # its owner stops it; nothing looks at a stopped server
        clock[0] = at(60)
        server.ready = True  # started again an hour later, still over budget
        server.orm_spawner.started = at(59).replace(tzinfo=None)
        await look(watch, server)
        assert watch.notice_for(server).stop_at == at(70)
        assert user.stopped == []

    asyncio.run(scenario())
    assert [f["stop_at"] for a, f in lines if a == "stop_warning"] == [
        "2026-12-07T12:11:00.000Z",
        "2026-12-07T13:10:00.000Z",
    ]


def test_a_budget_stop_is_findable_by_a_delete_while_it_runs(lines) -> None:
    """As JupyterHub's own stop: ``_stop_pending`` and ``_stop_future`` are set while the
    stop runs (a DELETE meanwhile waits for it), and cleared after."""
    clock = [at(1)]
    seen: list[Any] = []

    class Watched(User):
        async def stop(self, name: str) -> None:
            seen.append((server._stop_pending, server._stop_future is not None))
            await super().stop(name)

    user = Watched()
    server = spawner(user, at(1))
    config = communities(budget_usd_per_month=5.0, stop_over_budget=True, idle_warning_minutes=0)
    watch = watch_for(clock, config, guard=Guard(usd=6.0))
    asyncio.run(look(watch, server))
    assert seen == [(True, True)] and user.stopped == [""]
    assert server._stop_future is None and server._stop_pending is False
