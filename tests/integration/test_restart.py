"""Hub restarts never lose a server: running ones are found again on the same tunnel port,
ones stopped during the downtime show as stopped, and a hub killed in the middle of a spawn
leaves no instance running that the hub does not show."""

from __future__ import annotations

import http.server
import threading
import time

import pytest
import requests

from .harness import SERVICE_TOKEN, hub_env, hub_test_config, sign_in, start_hub
from .spawn_harness import front_control, instances_of, moto, server_model, start_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def restartable(cloud, tmp_path_factory):
    """Start/stop a hub on one state directory, like an operator's systemd unit would."""
    state = tmp_path_factory.mktemp("hub-restart")
    env = hub_env(cloud, state, SNH_EXTRA_CONFIG=str(hub_test_config(state)))
    hubs = []

    def start():
        # one hub at a time on this state directory, as under systemd: a hub an earlier test
        # left running would otherwise answer (and route) for the new one
        for earlier in hubs:
            if earlier.proc.poll() is None:
                earlier.stop()
        hub = start_hub(env, state / "hub.log")
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        hub.stop()


def reachable(hub, user: str, server: str) -> bool:
    path = f"/user/{user}/{server + '/' if server else ''}api/contents/"
    r = requests.get(
        f"{hub.url}{path}", timeout=30, headers={"Authorization": f"token {SERVICE_TOKEN}"}
    )
    return r.status_code == 200


def instance_of(cloud, user: str, server: str) -> dict:
    [instance] = [
        i
        for i in instances_of(cloud, user, server or "_")
        if i["State"]["Name"] not in ("terminated", "shutting-down")
    ]
    return instance


def test_restart_with_five_running_servers(restartable, cloud):
    hub = restartable()
    for user in ("alice", "bob"):
        sign_in(hub, user)
    servers = [("alice", "one"), ("alice", "two"), ("bob", "one"), ("bob", "two"), ("bob", "three")]
    ports = {}
    for user, name in servers:
        community = "nf-osc" if (user, name) == ("bob", "three") else "ad-portal"
        ports[(user, name)] = start_server(hub, user, {"community": community}, name=name)["state"][
            "tunnel_port"
        ]
    hub.stop()  # cleanup_servers = False: the instances keep running
    for user, name in servers:
        assert instance_of(cloud, user, name)["State"]["Name"] == "running"
    # while the hub is down, one instance is stopped (by a person in the console, say)
    gone = instance_of(cloud, "bob", "two")["InstanceId"]
    moto(cloud, "ec2").stop_instances(InstanceIds=[gone])

    hub = restartable()
    for user, name in servers:
        if (user, name) == ("bob", "two"):
            continue
        assert reachable(hub, user, name), (user, name)  # nobody had to do anything
        assert server_model(hub, user, name)["state"]["tunnel_port"] == ports[(user, name)]
    model = server_model(hub, "bob", "two")
    assert not model or not model.get("ready")
    for user, name in servers:
        if (user, name) != ("bob", "two"):
            hub.api("DELETE", f"/users/{user}/servers/{name}")


def test_hub_killed_mid_spawn_leaves_nothing_running_unseen(restartable, cloud):
    hub = restartable()
    sign_in(hub, "alice")
    front_control(cloud, "PUT", "/simulator", {"bootDelay": 8})
    try:
        r = hub.api("POST", "/users/alice/servers/killed", json={"community": "ad-portal"})
        assert r.status_code in (201, 202)
        deadline = time.monotonic() + 30
        while not [
            i
            for i in instances_of(cloud, "alice", "killed")
            if i["State"]["Name"] in ("pending", "running")
        ]:
            assert time.monotonic() < deadline, "no instance was launched"
            time.sleep(0.2)
        hub.crash()  # between RunInstances and the end of start()
    finally:
        front_control(cloud, "PUT", "/simulator", {"bootDelay": 2})

    hub = restartable()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        instance = instance_of(cloud, "alice", "killed")
        model = server_model(hub, "alice", "killed") or {}
        adopted = model.get("ready") and model["state"]["instance_id"] == instance["InstanceId"]
        stopped = instance["State"]["Name"] in ("stopping", "stopped")
        if adopted or stopped:
            break
        time.sleep(1)
    else:
        raise AssertionError(f"instance {instance['InstanceId']} runs unseen: {model}")
    if adopted:
        assert reachable(hub, "alice", "killed")
        hub.api("DELETE", "/users/alice/servers/killed")


def test_a_taken_tunnel_port_moves_the_route_with_the_tunnel(restartable, cloud):
    """Trust review, finding 7: after a restart the tunnel could not listen on its saved
    port (another local process had taken it) and moved, while the proxy route still pointed
    at the old port: the user's requests, cookies included, went to that process. The route
    now follows the tunnel."""
    hub = restartable()
    sign_in(hub, "alice")
    port = start_server(hub, "alice", {"community": "ad-portal"}, name="moved")["state"][
        "tunnel_port"
    ]
    hub.stop()

    class Foreign(http.server.BaseHTTPRequestHandler):
        seen: list[str] = []

        def do_GET(self) -> None:
            Foreign.seen.append(self.headers.get("Cookie", "") + " " + self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"foreign")

        def log_message(self, *args: object) -> None:
            pass

    squatter = http.server.HTTPServer(("127.0.0.1", port), Foreign)
    thread = threading.Thread(target=squatter.serve_forever, daemon=True)
    thread.start()
    try:
        hub = restartable()
        assert reachable(hub, "alice", "moved")  # the notebook, through the proxy
        assert server_model(hub, "alice", "moved")["state"]["tunnel_port"] != port
        assert Foreign.seen == []  # nothing reached the process on the old port
    finally:
        squatter.shutdown()
        squatter.server_close()
        hub.api("DELETE", "/users/alice/servers/moved")
