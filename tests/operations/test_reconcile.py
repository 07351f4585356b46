"""Reconciliation decisions: adopt what the hub shows running, stop (never terminate) what it
does not, and give a spawn that is still recording its instance a moment."""

from __future__ import annotations

import datetime as dt

from operations.reconcile import HubServer, decide, hub_servers
from spawner.poller import InstanceView

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


def view(iid: str, user: str, server: str = "_", state: str = "running", age_min: int = 60):
    return InstanceView(
        instance_id=iid,
        state=state,
        instance_type="t3.large",
        tags={"jupyterhub:user": user, "jupyterhub:server": server},
        launch_time=NOW - dt.timedelta(minutes=age_min),
    )


def test_hub_servers_from_the_rest_api():
    users = [
        {
            "name": "alice",
            "servers": {
                "": {"ready": True, "pending": None, "state": {"instance_id": "i-1"}},
                "b": {"ready": False, "pending": "spawn", "state": {}},
                "c": {"ready": False, "pending": None, "state": {"instance_id": "i-3"}},
            },
        }
    ]
    servers = hub_servers(users)
    assert servers[("alice", "")] == HubServer("alice", "", True, "i-1")
    assert servers[("alice", "b")].running and not servers[("alice", "c")].running


def test_decisions():
    servers = {
        ("alice", ""): HubServer("alice", "", True, "i-1"),
        ("alice", "old"): HubServer("alice", "old", False, "i-2"),
        ("bob", ""): HubServer("bob", "", True, "i-9"),
        ("carol", ""): HubServer("carol", "", False, None),
    }
    views = [
        view("i-1", "alice"),  # the server's own instance
        view("i-2", "alice", "old"),  # server stopped in the hub, instance runs
        view("i-3", "bob"),  # bob's server runs elsewhere
        view("i-4", "mallory"),  # unknown user
        view("i-5", "carol", age_min=2),  # a spawn may still be recording it
        view("i-6", "alice", "old", state="stopped"),  # not running: nothing to do
    ]
    got = {d.instance_id: d.action for d in decide(views, servers, NOW)}
    assert got == {"i-1": "adopt", "i-2": "stop", "i-3": "stop", "i-4": "stop", "i-5": "wait"}


def test_a_server_the_restarted_hub_is_still_checking_is_left_running():
    """A restarted hub with many servers starts its services after init_spawners_timeout
    (10 s) and checks the rest in the background, showing them ``pending: "check"`` and not
    ready. Before, reconciliation took them for stopped: a 1,000-server hub's restart
    stopped hundreds of running servers (benchmarks/scale.py)."""
    users = [
        {
            "name": "dana",
            "servers": {"": {"ready": False, "pending": "check", "state": {"instance_id": "i-7"}}},
        }
    ]
    servers = hub_servers(users)
    assert servers[("dana", "")].undecided and not servers[("dana", "")].running
    [decision] = decide([view("i-7", "dana")], servers, NOW)
    assert decision.action == "wait"
