"""Idle culling with a real hub, proxy, jupyterhub-idle-culler and notebook servers on the local
cloud, with a short idle timeout (``IDLE_TIMEOUT_SECONDS``/``CULL_EVERY_SECONDS``, as an
operator would try it): an unused server is stopped (instance stopped, volume kept) while a
server running code in a kernel is not; what an open RStudio tab and the hub's own probes do
is not activity; Start resumes the culled server with its files; each culler's role reaches
only its community's group; and an instance stops itself (the backstop) when left alone."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import Any

import pytest
import requests

from hub_config.culling import culler_scopes

from .harness import (
    REPO,
    SERVICE_TOKEN,
    hub_env,
    hub_test_config,
    sign_in,
    start_hub,
    wait_until,
)
from .spawn_harness import Kernel, front_control, moto, server_model

pytestmark = pytest.mark.integration

HUB_ID = "culling-test"  # its own instances: other modules' servers are not its own
IDLE_TIMEOUT = 15
CULL_EVERY = 2
PROBE_TOKEN = "culler-scope-probe-token-0123456789abcdef"
JUPYTER = {"community": "ad-portal", "image": "jupyter"}
RSTUDIO = {"community": "nf-osc", "image": "rstudio"}
AUTH = {"Authorization": f"token {SERVICE_TOKEN}"}


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    """Idle timeout 15 s, checks every 2 s; the hub polls servers and reads the proxy's route
    activity every second or two (were proxied traffic activity, it would show at once); a
    service whose role has exactly the nf-osc culler's scopes, to probe them."""
    state = tmp_path_factory.mktemp("hub-culling")
    extra = f"""
c.Spawner.poll_interval = 1
c.EC2Spawner.instance_poll_interval = 1
c.JupyterHub.last_activity_interval = 2
c.JupyterHub.services.append({{"name": "scope-probe", "api_token": "{PROBE_TOKEN}"}})
c.JupyterHub.load_roles.append(
    {{"name": "scope-probe", "scopes": {culler_scopes("nf-osc")!r}, "services": ["scope-probe"]}}
)
"""
    env = hub_env(
        cloud,
        state,
        SNH_HUB_ID=HUB_ID,
        SNH_EXTRA_CONFIG=str(hub_test_config(state, extra=extra)),
        IDLE_TIMEOUT_SECONDS=str(IDLE_TIMEOUT),
        CULL_EVERY_SECONDS=str(CULL_EVERY),
    )
    hub = start_hub(env, state / "hub.log")
    for name in ("alice", "bob"):  # alice: ad-portal; bob: ad-portal and nf-osc
        sign_in(hub, name)
    yield hub
    hub.stop()


def when(stamp: str | None) -> float:
    assert stamp, "no last_activity"
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def last_activity(hub, user: str) -> float:
    model = server_model(hub, user)
    assert model is not None
    return when(model["last_activity"])


def ready(hub, user: str) -> bool:
    model = server_model(hub, user)
    return bool(model and model.get("ready"))


def stopped(hub, user: str) -> bool:
    """The stop has finished. JupyterHub reports a server not ready as soon as its stop
    begins, before the spawner's StopInstances: EC2 is read only after this."""
    model = server_model(hub, user)
    return not model or not (model.get("ready") or model.get("pending"))


def start(hub, user: str, options: dict[str, Any]) -> None:
    r = hub.api("POST", f"/users/{user}/server", json=options)
    assert r.status_code in (201, 202), r.text


def instance_id(hub, user: str) -> str:
    """The instance of the user's running server (from the hub's state of it)."""
    model = server_model(hub, user)
    assert model is not None and model["state"].get("instance_id"), model
    return model["state"]["instance_id"]


def describe(cloud, iid: str) -> dict[str, Any]:
    return moto(cloud, "ec2").describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][
        0
    ]


def contents(hub, user: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(
        kwargs.pop("method", "GET"),
        f"{hub.url}/user/{user}/api/contents/{path}",
        headers=AUTH,
        timeout=30,
        **kwargs,
    )


class Loop(threading.Thread):
    """Runs ``step`` every ``every`` seconds until stopped; remembers failures."""

    def __init__(self, step, every: float) -> None:
        super().__init__(daemon=True)
        self.step, self.every = step, every
        self.stopped = threading.Event()
        self.count = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.step()
                self.count += 1
            except Exception as exc:
                self.errors.append(repr(exc))
            self.stopped.wait(self.every)

    def stop(self) -> None:
        self.stopped.set()
        self.join(30)


# --------------------------------------------------------------------------------------------


def test_a_malformed_override_stops_the_hub_naming_it(cloud, tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jupyterhub", "-f", str(REPO / "jupyterhub_config.py")],
        cwd=REPO,
        env=hub_env(cloud, tmp_path, CULL_EVERY_SECONDS="5m"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "CULL_EVERY_SECONDS='5m': not a positive whole number of seconds" in output
    assert "Traceback" not in output


def test_a_cullers_scopes_reach_only_its_communitys_group(hub) -> None:
    """The nf-osc culler's scopes, with JupyterHub's ``!group=`` filters: bob (in nf-osc)
    is visible with his servers and activity and his servers can be stopped; alice (only in
    ad-portal) does not exist for it; nothing else is allowed."""
    probe = {"Authorization": f"token {PROBE_TOKEN}"}

    def api(method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(
            method, f"{hub.url}/hub/api{path}", headers=probe, timeout=30, **kwargs
        )

    listed = api("GET", "/users?state=ready")
    assert listed.status_code == 200
    everyone = api("GET", "/users").json()
    assert [u["name"] for u in everyone] == ["bob"]
    bob = api("GET", "/users/bob").json()
    assert "servers" in bob and "last_activity" in bob
    assert "auth_state" not in bob and "groups" not in bob  # no read:users, no read:groups
    assert api("GET", "/users/alice").status_code == 404
    assert api("DELETE", "/users/alice/server").status_code == 404
    assert api("DELETE", "/users/bob/server").status_code == 204  # allowed (nothing to stop)
    assert api("POST", "/users/bob/server", json={}).status_code == 403
    assert api("DELETE", "/users/bob").status_code == 403
    assert api("GET", "/groups").status_code == 403


def test_idle_servers_are_stopped_and_busy_ones_are_not(hub, cloud) -> None:
    start(hub, "alice", JUPYTER)
    start(hub, "bob", RSTUDIO)
    # alice's idle clock runs from her server's start: she starts working as soon as it is
    # up, not when bob's is (on a loaded machine bob's start can take longer than the
    # idle timeout, and alice would be culled before she did anything).
    wait_until(lambda: ready(hub, "alice"), 120, "alice's server")
    kernel = Kernel(hub, "alice")
    alice_before = last_activity(hub, "alice")
    alice_works = Loop(lambda: kernel.run("import time; total = sum(range(10**5))"), 3.0)
    alice_works.start()
    wait_until(lambda: ready(hub, "bob"), 120, "bob's server")
    bob_instance, alice_instance = instance_id(hub, "bob"), instance_id(hub, "alice")

    # bob writes a file (activity), then leaves his RStudio tab open: its event long-poll
    # never stops, through the proxy. The hub keeps probing the notebook directly, as the
    # spawner does, through the tunnel's port. Neither is activity.
    before_write = time.time()
    written = contents(
        hub,
        "bob",
        "kept.txt",
        method="PUT",
        json={"type": "file", "format": "text", "content": "written before culling"},
    )
    assert written.status_code in (200, 201), written.text
    wait_until(lambda: last_activity(hub, "bob") >= before_write, 15, "bob's write reported")
    bob_last = last_activity(hub, "bob")
    tunnel_port = server_model(hub, "bob")["state"]["tunnel_port"]

    def rstudio_tab() -> None:
        if ready(hub, "bob"):
            requests.post(
                f"{hub.url}/user/bob/rstudio/events/get_events",
                data="{}",
                headers=AUTH,
                timeout=30,
            )

    def hub_probe() -> None:
        requests.get(f"http://127.0.0.1:{tunnel_port}/user/bob/api", timeout=10)

    # alice runs code in a kernel every few seconds, through the proxy's websocket (since
    # her server came up, above).
    loops = [Loop(rstudio_tab, 0.2), Loop(hub_probe, 1.0), alice_works]
    for loop in loops[:2]:
        loop.start()
    try:
        # Until bob's server is culled, its last activity never moves: not with the
        # long-polls, not with the probes, not with the hub's polls and route checks.
        seen: list[float] = []

        def culled() -> bool:
            model = server_model(hub, "bob")
            if model and model.get("ready"):
                seen.append(when(model["last_activity"]))
                return False
            return True

        wait_until(culled, IDLE_TIMEOUT + 30, "bob's server culled", interval=0.5)
        culled_at = time.time()
        assert set(seen) == {bob_last} and len(seen) >= 10
        assert culled_at - bob_last >= IDLE_TIMEOUT
        assert loops[0].count >= 5 and loops[1].count >= 5
        time.sleep(CULL_EVERY * 3)  # alice's culler has had its chances
        assert ready(hub, "alice")
        assert last_activity(hub, "alice") > alice_before
        assert loops[2].errors == [] and loops[2].count >= 4
    finally:
        for loop in loops:
            loop.stop()
        kernel.close()

    # Culled = stopped: the instance is stopped (by the hub's StopInstances), volume kept.
    wait_until(lambda: stopped(hub, "bob"), 60, "bob's stop to finish")
    instance = describe(cloud, bob_instance)
    assert instance["State"]["Name"] == "stopped"
    assert instance["StateReason"]["Code"] == "Client.UserInitiatedShutdown"
    assert any(m["DeviceName"] == "/dev/sdf" for m in instance["BlockDeviceMappings"])
    log = hub.log()
    assert "Culling server bob" in log and "idle-culler-" in log
    assert "Culling server alice" not in log[: log.index("Culling server bob")]

    # Start again: the same instance resumes, the file is there.
    start(hub, "bob", RSTUDIO)
    wait_until(lambda: ready(hub, "bob"), 120, "bob's server again")
    assert instance_id(hub, "bob") == bob_instance
    kept = contents(hub, "bob", "kept.txt")
    assert kept.status_code == 200 and kept.json()["content"] == "written before culling"

    # alice, left alone, goes the same way.
    wait_until(lambda: stopped(hub, "alice"), IDLE_TIMEOUT + 30, "alice's server culled")
    assert describe(cloud, alice_instance)["State"]["Name"] == "stopped"


def test_a_silent_busy_kernel_is_not_culled_and_an_idle_one_is(hub) -> None:
    """A cell that computes silently for three idle timeouts (``time.sleep``: no output, no
    message from the kernel) keeps the server: the images' busy-activity rule
    (``images/shared/notebook_busy_activity.py``) counts the busy kernel, and the notebook
    reports it to the hub. Once the cell is done the kernel is idle, its websocket still
    open as a browser tab holds it, and the culler stops the server."""
    start(hub, "alice", JUPYTER)
    wait_until(lambda: ready(hub, "alice"), 120, "alice's server")
    kernel = Kernel(hub, "alice")
    silent = IDLE_TIMEOUT * 3
    kernel.submit(f"import time; time.sleep({silent})")
    began = time.time()
    try:

        def computation_over() -> bool:
            assert ready(hub, "alice"), "culled while its kernel was busy"
            return time.time() - began > silent

        wait_until(computation_over, silent + 60, "the silent computation to end", interval=0.5)
        wait_until(lambda: stopped(hub, "alice"), IDLE_TIMEOUT + 60, "the idle server culled")
    finally:
        kernel.close()
    assert "Culling server alice" in hub.log()


def test_an_instance_left_alone_stops_itself(hub, cloud) -> None:
    """The instance's backstop (here with a 4 s limit) stops a server nobody uses, counted
    from its boot, even when the hub does nothing: the hub then shows it stopped."""
    control = cloud.endpoints["aws"]["control_url"]
    if not ready(hub, "bob"):
        start(hub, "bob", RSTUDIO)
        wait_until(lambda: ready(hub, "bob"), 120, "bob's server")
    iid = instance_id(hub, "bob")
    front_control(
        cloud, "PUT", "/simulator", {"backstopIdleSeconds": 4, "backstopCheckSeconds": 0.5}
    )
    try:
        wait_until(lambda: not ready(hub, "bob"), 30, "the hub to show bob's server stopped")
    finally:
        front_control(
            cloud, "PUT", "/simulator", {"backstopIdleSeconds": None, "backstopCheckSeconds": 60}
        )
    instance = describe(cloud, iid)
    assert instance["State"]["Name"] == "stopped"
    assert instance["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
    log = open(cloud.endpoints["aws"]["instances_log"], encoding="utf-8").read()
    assert f"{iid} notebook-backstop: stopping this instance: no notebook activity" in log

    def simulated() -> dict[str, Any]:
        listed = requests.get(f"{control}/instances", timeout=10).json()
        return next(i for i in listed["instances"] if i["instanceId"] == iid)

    wait_until(lambda: simulated()["phase"] == "stopped", 10, "the notebook killed")
    assert simulated()["pid"] is None

    # JupyterHub calls no stop() for a server whose poll() says it stopped by itself: the
    # server's parameters (the Synapse token among them) are deleted by poll() itself.
    ssm = moto(cloud, "ssm")
    path = f"/synapse-notebook-hub/{HUB_ID}/bob/_"
    wait_until(
        lambda: not ssm.get_parameters_by_path(Path=path, Recursive=True)["Parameters"],
        10,
        "the parameters deleted",
    )
