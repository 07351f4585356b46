"""The servers overview: the row builder and the cost estimate (pure), and the page in a real
JupyterHub (in this process, no proxy): admins only, one row per server, cost and uptime."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from jupyterhub import orm
from jupyterhub.app import JupyterHub
from jupyterhub.proxy import Proxy
from jupyterhub.spawner import Spawner
from moto import mock_aws
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import create_signed_value
from traitlets.config import Config

from hub_config import DEFAULT_COMMUNITIES_PATH, load_communities
from hub_config.communities import load_instance_types
from operations.admin_page import (
    TEMPLATE_PATH,
    HubServer,
    ServersOverviewHandler,
    build_rows,
    format_duration,
    format_table,
    hub_servers_from_api,
    overview_handler,
    totals,
)
from operations.cost import MonthCost, Run, month_cost, month_start, price_lookup, runs_from_audit
from spawner.aws import Aws
from spawner.poller import InstanceView
from spawner.region import Regions

DEMO = load_communities(DEFAULT_COMMUNITIES_PATH)
AD, NF = DEMO.communities
TABLE = load_instance_types()
AMI = "ami-03cf127a"  # one of moto's own (listing them takes seconds)
NOW = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


def view(
    instance_id: str,
    state: str = "running",
    *,
    user: str = "alice",
    server: str = "_",
    community: str = "ad-portal",
    instance_type: str = "t3.large",
    launch_time: dt.datetime | None = None,
    state_since: dt.datetime | None = None,
    **tags: str,
) -> InstanceView:
    return InstanceView(
        instance_id=instance_id,
        state=state,
        instance_type=instance_type,
        tags={
            "jupyterhub:hub": "hub",
            "jupyterhub:user": user,
            "jupyterhub:server": server,
            "jupyterhub:community": community,
            "jupyterhub:image": "jupyter-scipy",
            **tags,
        },
        launch_time=launch_time,
        availability_zone="us-east-1a",
        state_since=state_since,
    )


def t3(hours: float) -> float:
    return hours * AD.instance_type("t3.large").price_in("us-east-1")


# ------------------------------------------------------------------------------------------
# Cost this month
# ------------------------------------------------------------------------------------------


def test_month_starts_at_midnight_utc_on_the_first():
    assert month_start(NOW) == dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
    local = dt.datetime(2025, 3, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert month_start(local) == dt.datetime(2025, 2, 1, tzinfo=dt.UTC)


def test_current_run_counts_from_ec2_launch_time():
    price = price_lookup(AD, "us-east-1", TABLE)
    cost = month_cost([], view("i-1", launch_time=NOW - 5 * HOUR), price, NOW)
    assert cost == MonthCost(hours=pytest.approx(5), usd=pytest.approx(t3(5)), complete=True)


def test_earlier_runs_come_from_the_audit_log_and_overlaps_count_once():
    records = [
        {"time": "2025-03-02T08:00:00Z", "action": "launch", "instance_id": "i-1"},
        {"time": "2025-03-02T10:00:00Z", "action": "stop", "instance_id": "i-1"},
        {"time": "2025-03-02T11:00:00Z", "action": "stop", "instance_id": "i-1"},  # repeat
        {"time": "2025-03-10T09:00:00Z", "action": "resume", "instance_id": "i-1"},
        {"time": "2025-03-03T00:00:00Z", "action": "resume", "instance_id": "i-1",
         "dry_run": True},
        {"time": "2025-03-04T00:00:00Z", "action": "resume", "instance_id": "i-1",
         "outcome": "failed"},
    ]  # fmt: skip
    runs = runs_from_audit(records)
    assert runs["i-1"] == [
        Run(dt.datetime(2025, 3, 2, 8, tzinfo=dt.UTC), dt.datetime(2025, 3, 2, 10, tzinfo=dt.UTC)),
        Run(dt.datetime(2025, 3, 10, 9, tzinfo=dt.UTC), None),
    ]
    # running since 09:00 by the log, since 09:00:30 by EC2: 3 hours, not 6
    current = view("i-1", launch_time=NOW - 3 * HOUR + dt.timedelta(seconds=30))
    cost = month_cost(runs["i-1"], current, price_lookup(AD, "us-east-1", TABLE), NOW)
    assert cost.hours == pytest.approx(2 + 3)
    assert cost.usd == pytest.approx(t3(5)) and cost.complete


def test_runs_are_clipped_to_this_month():
    runs = [
        Run(dt.datetime(2025, 2, 28, 22, tzinfo=dt.UTC), dt.datetime(2025, 3, 1, 2, tzinfo=dt.UTC))
    ]
    cost = month_cost(runs, view("i-1", "stopped"), price_lookup(AD, "us-east-1"), NOW)
    assert cost.hours == pytest.approx(2)


def test_an_open_run_of_a_stopped_instance_ends_at_ec2s_stop_time_or_counts_nothing():
    runs = [Run(NOW - 10 * HOUR, None)]
    price = price_lookup(AD, "us-east-1")
    dated = month_cost(runs, view("i-1", "stopped", state_since=NOW - 6 * HOUR), price, NOW)
    assert dated.hours == pytest.approx(4) and dated.complete
    undated = month_cost(runs, view("i-1", "stopped"), price, NOW)
    assert undated.hours == 0 and not undated.complete
    assert undated.format() == "≥ $0.00"


def test_each_period_is_priced_by_its_own_instance_type():
    runs = [
        Run(NOW - 10 * HOUR, NOW - 8 * HOUR, "m5.2xlarge"),
        Run(NOW - 4 * HOUR, NOW - 3 * HOUR, "t3.large"),
    ]
    cost = month_cost(runs, view("i-1", "stopped"), price_lookup(AD, "us-east-1", TABLE), NOW)
    assert cost.usd == pytest.approx(2 * 0.384 + 1 * 0.0832)


def test_a_type_the_community_no_longer_offers_is_priced_from_the_table_or_flagged():
    runs = [Run(NOW - 2 * HOUR, NOW - HOUR, "m5.large")]  # an nf-osc type, not ad-portal's
    priced = month_cost(runs, view("i-1", "stopped"), price_lookup(AD, "us-east-1", TABLE), NOW)
    assert priced.usd == pytest.approx(TABLE["m5.large"].price_in("us-east-1"))
    unpriced = month_cost(runs, view("i-1", "stopped"), price_lookup(AD, "us-east-1"), NOW)
    assert unpriced.usd is None and not unpriced.complete and unpriced.format() == "?"


# ------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------


def hub_server(user, name="", hub_state="running", **kwargs) -> HubServer:
    return HubServer(user=user, name=name, hub_state=hub_state, **kwargs)


def test_rows_match_servers_to_instances_by_state_then_by_tags():
    servers = [
        hub_server("alice", instance_id="i-a", region="us-east-1",
                   last_activity=NOW - dt.timedelta(minutes=5),
                   options={"community": "ad-portal", "image": "jupyter-scipy"}),
        hub_server("bob", "gpu", hub_state="stopped"),  # no state: found by its tags
        hub_server("carol", hub_state="stopped",
                   options={"community": "nf-osc", "instance_type": "m5.large"}),  # never ran
    ]  # fmt: skip
    views = [
        view("i-a", launch_time=NOW - 26 * HOUR),
        view("i-b", "stopped", user="bob", server="gpu", community="nf-osc",
             instance_type="m5.large", state_since=NOW - dt.timedelta(days=10)),
        view("i-old", "terminated", user="bob", server="gpu"),
        view("i-orphan", "stopped", user="dave", server="_"),
    ]  # fmt: skip
    rows = build_rows(servers, views, DEMO, NOW, price_table=TABLE)
    by_user = {(r.user, r.server): r for r in rows}
    alice = by_user[("alice", "")]
    assert (alice.instance_id, alice.state, alice.hub_state) == ("i-a", "running", "running")
    assert alice.uptime_text == "1d 2h" and alice.last_activity_text(NOW) == "5m ago"
    assert alice.cost.usd == pytest.approx(t3(26))
    assert (alice.community, alice.image, alice.region) == (
        "ad-portal",
        "jupyter-scipy",
        "us-east-1",
    )
    bob = by_user[("bob", "gpu")]
    assert (bob.instance_id, bob.state, bob.community) == ("i-b", "stopped", "nf-osc")
    assert bob.uptime_seconds is None
    assert bob.removal_date == NOW - dt.timedelta(days=10) + dt.timedelta(days=NF.dormancy_days)
    carol = by_user[("carol", "")]
    assert (carol.state, carol.instance_id, carol.instance_type) == ("no instance", "", "m5.large")
    assert carol.cost is None and carol.last_activity_text(NOW) == "never"
    dave = by_user[("dave", "")]
    assert (dave.hub_state, dave.instance_id) == ("no server", "i-orphan")
    assert "i-old" not in {r.instance_id for r in rows}
    assert totals(rows) == {
        "servers": 4,
        "running": 1,
        "cost_this_month_usd": round(t3(26), 2),
        "cost_complete": True,
    }


def test_a_region_ec2_could_not_answer_for_is_unknown_not_empty():
    servers = [hub_server("alice", instance_id="i-a", region="us-east-1")]
    [row] = build_rows(servers, [], DEMO, NOW, unknown_regions=["us-east-1"])
    assert row.state == "unknown"


def test_tag_lookup_uses_sanitised_names():
    servers = [hub_server("ann#1", "my server!")]
    views = [view("i-x", user="ann_1", server="my server_")]
    [row] = build_rows(servers, views, DEMO, NOW)
    assert row.instance_id == "i-x"


def test_servers_from_the_rest_api():
    users = [
        {
            "name": "alice",
            "servers": {
                "": {
                    "name": "",
                    "ready": True,
                    "pending": None,
                    "stopped": False,
                    "last_activity": "2025-03-10T11:55:00.000000Z",
                    "started": "2025-03-09T10:00:00Z",
                    "user_options": {"community": "ad-portal"},
                    "state": {"instance_id": "i-a", "region": "us-east-1"},
                },
                "gpu": {"name": "gpu", "ready": False, "pending": "spawn", "stopped": False},
                "old": {"name": "old", "ready": False, "pending": None, "stopped": True},
            },
        },
        {"name": "bob", "servers": {}},
    ]
    servers = {(s.user, s.name): s for s in hub_servers_from_api(users)}
    default = servers[("alice", "")]
    assert default.hub_state == "running" and default.instance_id == "i-a"
    assert default.last_activity == dt.datetime(2025, 3, 10, 11, 55, tzinfo=dt.UTC)
    assert default.options == {"community": "ad-portal"}
    assert servers[("alice", "gpu")].hub_state == "pending: spawn"
    assert servers[("alice", "old")].hub_state == "stopped"


def test_text_table_and_durations():
    rows = build_rows(
        [hub_server("alice", instance_id="i-a")], [view("i-a", launch_time=NOW - HOUR)], DEMO, NOW
    )
    text = format_table(rows, NOW)
    header, line = text.splitlines()
    assert header.split()[:3] == ["USER", "SERVER", "COMMUNITY"]
    assert "alice" in line and "(default)" in line and "i-a" in line and "1h 00m" in line
    assert [format_duration(s) for s in (20, 60, 3 * 3600 + 300, 2 * 86400 + 3600)] == [
        "<1m", "1m", "3h 05m", "2d 1h",
    ]  # fmt: skip


def test_row_json_is_serialisable():
    [row] = build_rows(
        [hub_server("alice", instance_id="i-a")], [view("i-a", launch_time=NOW - HOUR)], DEMO, NOW
    )
    data = json.loads(json.dumps(row.as_dict()))
    assert data["uptime_seconds"] == 3600 and data["hours_this_month"] == 1.0
    assert data["cost_this_month_usd"] == pytest.approx(t3(1), abs=1e-4)


# ------------------------------------------------------------------------------------------
# The page in a real JupyterHub (in this process: no proxy, no HTTP to any server)
# ------------------------------------------------------------------------------------------


class NoProxy(Proxy):
    """Routes kept in a dict: the hub runs without configurable-http-proxy."""

    should_start = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.routes: dict[str, Any] = {}

    async def add_route(self, routespec, target, data):
        self.routes[routespec] = {"routespec": routespec, "target": target, "data": data}

    async def delete_route(self, routespec):
        self.routes.pop(routespec, None)

    async def get_all_routes(self):
        return dict(self.routes)


class RunningSpawner(Spawner):
    """Says its server runs; records the actor the audit helper finds when stopped."""

    stops: list[Any] = []

    async def start(self):
        return ("127.0.0.1", 9)

    async def poll(self):
        return None

    async def stop(self, now=False):
        from operations.audit import actor_for

        RunningSpawner.stops.append(actor_for(self))


class QuietHub(JupyterHub):
    """No config file from the working directory (the project's), no signal handlers."""

    def load_config_file(self, *args: Any, **kwargs: Any) -> None:
        pass

    def init_signal(self) -> None:
        pass


@dataclass
class InProcessHub:
    app: JupyterHub
    url: str

    def cookie(self, name: str) -> str:
        orm_user = orm.User.find(self.app.db, name)
        user = self.app.users[orm_user]
        value = create_signed_value(
            self.app.tornado_settings["cookie_secret"], self.app.hub.cookie_name, user.cookie_id
        ).decode()
        return f"{self.app.hub.cookie_name}={value}"

    async def get(self, path: str, as_user: str) -> HTTPResponse:
        return await AsyncHTTPClient().fetch(
            self.url + path,
            headers={"Cookie": self.cookie(as_user)},
            raise_error=False,
            follow_redirects=False,
        )


@contextlib.asynccontextmanager
async def inprocess_hub(config: Config) -> AsyncIterator[InProcessHub]:
    """A real JupyterHub application (database, users, roles, handlers, templates) served on
    a loopback port; users alice (admin), bob and carol."""
    config.JupyterHub.db_url = "sqlite:///:memory:"
    config.JupyterHub.cookie_secret = os.urandom(32)
    config.JupyterHub.authenticator_class = "dummy"
    config.JupyterHub.proxy_class = NoProxy
    config.JupyterHub.spawner_class = RunningSpawner
    config.JupyterHub.allow_named_servers = True
    config.JupyterHub.log_level = "WARN"
    config.Authenticator.admin_users = {"alice"}
    config.Authenticator.allowed_users = {"alice", "bob", "carol"}
    QuietHub.clear_instance()
    app = QuietHub(config=config)
    await app.initialize([])
    server = HTTPServer(app.tornado_application)
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    try:
        yield InProcessHub(app, f"http://127.0.0.1:{port}")
    finally:
        server.stop()
        app.db.close()
        QuietHub.clear_instance()


@pytest.fixture
def aws(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield Aws("us-east-1")


def run_instance(hub: str, user: str, server: str = "_", community: str = "ad-portal") -> str:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    tags = [
        {"Key": "jupyterhub:hub", "Value": hub},
        {"Key": "jupyterhub:user", "Value": user},
        {"Key": "jupyterhub:server", "Value": server},
        {"Key": "jupyterhub:community", "Value": community},
        {"Key": "jupyterhub:image", "Value": "jupyter-scipy"},
    ]
    answer = ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.large",
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )
    return answer["Instances"][0]["InstanceId"]


async def test_the_page_lists_every_server_for_admins_only(aws, tmp_path):
    mine = run_instance("hub-test", "alice")
    run_instance("other-hub", "alice")  # another hub's: not listed
    audit_path = tmp_path / "audit.log"
    audit_path.write_text(
        json.dumps({"time": "2000-01-01T00:00:00Z", "action": "launch", "instance_id": mine}) + "\n"
    )
    config = Config()
    handler = overview_handler(
        regions=Regions.of(aws),
        hub_id="hub-test",
        communities=load_communities(DEFAULT_COMMUNITIES_PATH),
        audit_log=str(audit_path),
    )
    config.JupyterHub.extra_handlers = [handler]
    config.JupyterHub.template_paths = [TEMPLATE_PATH]
    async with inprocess_hub(config) as hub:
        app = hub.app
        alice = orm.User.find(app.db, "alice")
        spawner = app.users[alice].spawners[""]
        spawner.orm_spawner.state = {
            "instance_id": mine,
            "region": "us-east-1",
            "options": {"community": "ad-portal", "image": "jupyter-scipy"},
        }
        spawner.orm_spawner.server = orm.Server()
        spawner.orm_spawner.last_activity = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        app.db.commit()

        page = await hub.get("/hub/servers-overview", "alice")
        assert page.code == 200
        html = page.body.decode()
        assert "<h1>Servers overview</h1>" in html
        assert 'id="jupyterhub-logo"' in html  # inside JupyterHub's page.html
        row = re.search(
            rf'<tr data-user="alice"\s+data-server=""\s+data-instance="{mine}">(.*?)</tr>',
            html,
            re.S,
        )
        assert row is not None
        cells = [c.strip() for c in re.findall(r"<td>(.*?)</td>", row.group(1), re.S)]
        assert cells[2:7] == ["ad-portal", "jupyter-scipy", "t3.large", "running", "running"]
        assert cells[8] in ("&lt;1m ago", "1m ago")  # escaped by the page
        assert cells[9].startswith("$")  # running since the month began, by the audit log

        data = json.loads((await hub.get("/hub/servers-overview?format=json", "alice")).body)
        [row_json] = [r for r in data["rows"] if r["instance_id"] == mine]
        assert row_json["state"] == "running" and row_json["user"] == "alice"
        assert {r["instance_id"] for r in data["rows"]} == {mine}

        for user in ("bob", "carol"):
            refused = await hub.get("/hub/servers-overview", user)
            assert refused.code == 403
            assert mine not in refused.body.decode()


async def test_the_page_needs_a_signed_in_user(aws):
    config = Config()
    config.JupyterHub.extra_handlers = [
        overview_handler(regions=Regions(), hub_id="hub-test", communities=None)
    ]
    config.JupyterHub.template_paths = [TEMPLATE_PATH]
    async with inprocess_hub(config) as hub:
        answer = await AsyncHTTPClient().fetch(
            hub.url + "/hub/servers-overview", raise_error=False, follow_redirects=False
        )
        assert answer.code == 302 and "/hub/login" in answer.headers["Location"]


def test_handler_entry_for_extra_handlers():
    regions, communities = Regions(), load_communities(DEFAULT_COMMUNITIES_PATH)
    pattern, cls, kwargs = overview_handler(
        regions=regions, hub_id="h", communities=communities, audit_log="/s/audit.log"
    )
    assert pattern == r"/servers-overview" and cls is ServersOverviewHandler
    assert kwargs.pop("audit_runs").path == Path("/s/audit.log")
    assert kwargs == {"regions": regions, "hub_id": "h", "communities": communities}
    assert os.path.isfile(os.path.join(TEMPLATE_PATH, "servers-overview.html"))


# ------------------------------------------------------------------------------------------
# snh servers: the same rows, from the REST API
# ------------------------------------------------------------------------------------------

ADMIN_TOKEN = "servers-command-token-0123456789abcdef"


async def test_servers_command_reads_the_rest_api_and_ec2(aws, tmp_path, capsys):
    import asyncio

    from operations.cli import main

    mine = run_instance("hub-test", "bob", "gpu", community="nf-osc")
    regions = Regions.of(aws)
    config = Config()
    config.JupyterHub.services = [{"name": "ops", "api_token": ADMIN_TOKEN}]
    config.JupyterHub.load_roles = [
        {
            "name": "ops",
            "scopes": ["list:users", "read:users", "read:servers", "admin:server_state"],
            "services": ["ops"],
        }
    ]
    async with inprocess_hub(config) as hub:
        app = hub.app
        bob = orm.User.find(app.db, "bob")
        # a named server, stopped in the hub's eyes, whose instance runs
        state = {"instance_id": mine, "region": "us-east-1"}
        app.db.add(orm.Spawner(name="gpu", user=bob, state=state))
        app.db.commit()
        args = ["servers", "--hub-url", hub.url, "--token", ADMIN_TOKEN, "--hub-id", "hub-test",
                "--communities", str(DEFAULT_COMMUNITIES_PATH),
                "--audit-log", str(tmp_path / "none.log")]  # fmt: skip
        assert await asyncio.to_thread(main, [*args, "--json"], regions=regions) == 0
        data = json.loads(capsys.readouterr().out)
        [row] = [r for r in data["rows"] if r["instance_id"] == mine]
        assert (row["server"], row["instance_id"], row["state"]) == ("gpu", mine, "running")
        assert (row["hub_state"], row["community"]) == ("stopped", "nf-osc")
        assert await asyncio.to_thread(main, args, regions=regions) == 0
        text = capsys.readouterr().out
        assert text.splitlines()[0].startswith("USER")
        assert any(mine in line and "bob" in line for line in text.splitlines())

        refused = await asyncio.to_thread(
            main, ["servers", "--hub-url", hub.url, "--token", "wrong", "--region", "us-east-1"]
        )
        assert refused == 2
        assert "HTTP 403" in capsys.readouterr().err


def test_audit_runs_are_read_incrementally_and_survive_rotation(tmp_path):
    from operations.admin_page import AuditRuns

    path = tmp_path / "audit.log"

    def line(time, action, instance_id="i-1"):
        return json.dumps({"time": time, "action": action, "instance_id": instance_id}) + "\n"

    path.write_text(
        line("2025-03-01T00:00:00Z", "launch") + line("2025-03-01T01:00:00Z", "snapshot")
    )
    reader = AuditRuns(path)
    assert [r.end for r in reader.runs(NOW)["i-1"]] == [None]
    with path.open("a") as f:
        f.write(line("2025-03-01T02:00:00Z", "stop") + '{"time": "2025-03-0')  # half a line
    [run] = reader.runs(NOW)["i-1"]
    assert run.end == dt.datetime(2025, 3, 1, 2, tzinfo=dt.UTC)
    with path.open("a") as f:
        f.write('2T00:00:00Z", "action": "resume", "instance_id": "i-1"}\n')
    assert [r.end for r in reader.runs(NOW)["i-1"]] == [run.end, None]
    assert len(reader._events) == 3  # the snapshot line is not kept
    rotated = tmp_path / "audit.log.1"
    path.rename(rotated)
    path.write_text(line("2025-03-05T00:00:00Z", "launch", "i-2"))
    assert set(reader.runs(NOW)) == {"i-2"}
    # lines older than the window are dropped
    assert AuditRuns(rotated, keep_days=1).runs(NOW) == {}
