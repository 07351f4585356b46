"""The home page tells a user when a stopped server will be removed, with a real hub on the
local cloud: "Stopped since <EC2's time of the stop>, will be removed on <that + the
community's dormancy_days>" for the default server and for a named one; nothing for a server
never started, running, or deleted.

The stop time is EC2's ``StateTransitionReason`` ("User initiated (… GMT)"; EC2 API
reference, Instance), as the reaper reads it; the page is JupyterHub's own ``home.html``,
extended through ``template_paths`` and given the line through ``template_vars`` (JupyterHub
docs, "Working with templates and UI")."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from operations.home_page import format_day, format_moment
from spawner.poller import InstanceView

from .harness import own_hub, sign_in
from .spawn_harness import moto, start_server, stop_server

pytestmark = pytest.mark.integration

HUB_ID = "home-page-test"  # its own instances: other modules' stopped servers are not here
LINE = re.compile(r'<p class="snh-stopped-line[^"]*"\s+data-server-name="([^"]*)">(.*?)</p>', re.S)


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    with own_hub(cloud, tmp_path_factory.mktemp("hub-home-page"), HUB_ID) as hub:
        yield hub


@pytest.fixture(scope="module")
def alice(hub):
    session, final = sign_in(hub, "alice")
    assert final.url.endswith("/hub/home"), final.url
    return session


def lines(hub, session) -> dict[str, str]:
    """Server name ("" for the default server) -> its line on the home page."""
    page = session.get(f"{hub.url}/hub/home", timeout=30)
    assert page.status_code == 200, page.text[:500]
    assert 'id="start"' in page.text  # JupyterHub's own page, extended
    return {
        name: " ".join(re.sub(r"<[^>]+>", " ", text).split())
        for name, text in LINE.findall(page.text)
    }


def expected(cloud, instance_id: str, days: int) -> str:
    raw = moto(cloud, "ec2").describe_instances(InstanceIds=[instance_id])
    since = InstanceView.from_api(raw["Reservations"][0]["Instances"][0]).state_since
    assert since is not None, "moto gave no time of the stop"
    due = since + dt.timedelta(days=days)
    assert abs((dt.datetime.now(dt.UTC) - since).total_seconds()) < 120
    return f"Stopped since {format_moment(since)}, will be removed on {format_day(due)}."


def test_stopped_servers_say_when_they_will_be_removed(hub, cloud, alice):
    assert lines(hub, alice) == {}  # never started

    default = start_server(hub, "alice", {"community": "ad-portal"})
    named = start_server(hub, "alice", {"community": "ad-portal"}, name="analysis")
    assert lines(hub, alice) == {}  # running

    stop_server(hub, "alice")
    stop_server(hub, "alice", "analysis")
    shown = lines(hub, alice)
    assert shown == {
        "": "Your server: " + expected(cloud, default["state"]["instance_id"], 30),
        "analysis": "analysis: " + expected(cloud, named["state"]["instance_id"], 30),
    }

    # deleting the named server terminates its instance: its line goes
    r = hub.api("DELETE", "/users/alice/servers/analysis", json={"remove": True})
    assert r.status_code in (202, 204), r.text
    assert set(lines(hub, alice)) == {""}

    # started again: running, no line; the spawner's own stop time is cleared by the start
    start_server(hub, "alice", {"community": "ad-portal"})
    assert lines(hub, alice) == {}
    assert saved_state(hub)["stopped_at"] is None
    stop_server(hub, "alice")
    assert saved_state(hub)["stopped_at"]
    assert set(lines(hub, alice)) == {""}


def saved_state(hub) -> dict:
    r = hub.api("GET", "/users/alice?include_stopped_servers=1")
    return r.json()["servers"][""]["state"]
