"""Light simulated instances (``python -m localcloud serve --light-instances``) with a real hub
and proxy: the boot the hub depends on is the real one (instance role, parameters, SSM
registration), but the server that answers is the local cloud's one shared responder.

What JupyterHub requires of a single-user server here is what ``Spawner.start`` documents: the
URL it returns must answer HTTP (``User._wait_up`` GETs ``<url><prefix>api`` and accepts any
status below 500, reading ``X-JupyterHub-Version``); EC2's ``StopInstances`` leaves the
instance ``stopped``.
"""

from __future__ import annotations

import jupyterhub
import pytest
import requests

from .harness import sign_in, start_localcloud, wait_until
from .spawn_harness import front_control, instances_of, simulated, start_server, stop_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, hub_url):
    """This module's local cloud: light instances, no boot delay."""
    cloud = start_localcloud(
        tmp_path_factory.mktemp("localcloud"), hub_url, "--boot-delay", "0", "--light-instances"
    )
    yield cloud
    cloud.stop()


def light(cloud, instance_id: str) -> dict:
    """The instance's record; the simulator says its instances are light."""
    assert front_control(cloud, "GET", "/instances")["lightInstances"] is True
    return simulated(cloud, instance_id)


def test_a_light_instance_is_started_reached_and_stopped_by_the_hub(cloud, hub):
    sign_in(hub, "alice")
    start_server(hub, "alice", {"community": "ad-portal", "image": "jupyter"}, timeout=90)
    (instance,) = instances_of(cloud, "alice")
    sim = light(cloud, instance["InstanceId"])
    # Booted the real way, but without a process of its own.
    assert sim["phase"] == "running" and sim["agentOnline"] and sim["light"]
    assert sim["pid"] is None and sim["volumeDir"]
    log = (cloud.state_dir / "instances.log").read_text()
    assert "temporary credentials obtained" in log and "parameters read" in log

    # Through the proxy, the route the hub added, the SSM tunnel and the stand-in's session.
    answer = requests.get(f"{hub.url}/user/alice/api", timeout=30, allow_redirects=False)
    assert answer.status_code == 200 and "version" in answer.json()
    assert answer.headers["X-JupyterHub-Version"] == jupyterhub.__version__
    status = requests.get(f"{hub.url}/user/alice/api/status", timeout=30).json()
    assert "last_activity" in status

    stop_server(hub, "alice")
    wait_until(lambda: light(cloud, instance["InstanceId"])["phase"] == "stopped", 30, "the stop")
    assert instances_of(cloud, "alice")[0]["State"]["Name"] == "stopped"
