"""The hub with real-boot instances (``python -m localcloud --real-boot serve``): JupyterHub's
start, stop and start again of alice's server, where her instance is a booted Debian machine
that runs the hub's user data, the bootstrap and the notebook image itself
(``localcloud.instances.realboot``), reached through its SSM agent's link.

What is checked is what a user of the hub sees and what EC2 would show: the notebook answers
through the proxy; after a stop the machine is off and the instance stopped; after a start it
booted again (the bootstrap ran a second time) with the same home volume and its files.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
import requests

from .harness import (
    hub_env,
    hub_test_config,
    sign_in,
    start_hub,
    start_localcloud,
    wait_until,
)
from .spawn_harness import contents, instances_of, simulated, start_server, stop_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("systemd-nspawn"),
        reason="real-boot machines need root and systemd-nspawn (make test installs it)",
    ),
]
OPTIONS = {"community": "ad-portal", "image": "jupyter"}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, hub_url):
    cloud = start_localcloud(
        tmp_path_factory.mktemp("localcloud"), hub_url, "--boot-delay", "0", "--real-boot"
    )
    yield cloud
    cloud.stop()


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    """The hub's API where the local cloud's machines reach it (``hub_api=False``)."""
    state = tmp_path_factory.mktemp("hub")
    config = hub_test_config(state, hub_api=False)
    hub = start_hub(hub_env(cloud, state, SNH_EXTRA_CONFIG=str(config)), state / "hub.log")
    yield hub
    hub.stop()


def test_alices_server_is_a_real_machine_that_stops_and_starts_with_her_files(cloud, hub):
    sign_in(hub, "alice")
    started = time.monotonic()
    start_server(hub, "alice", OPTIONS, timeout=600)
    boot_to_notebook = time.monotonic() - started
    (instance,) = instances_of(cloud, "alice")
    iid = instance["InstanceId"]
    assert simulated(cloud, iid)["agentOnline"]

    answer = requests.get(f"{hub.url}/user/alice/api", timeout=60, allow_redirects=False)
    assert answer.status_code == 200 and "version" in answer.json()
    saved = contents(
        hub,
        "alice",
        "kept.txt",
        method="PUT",
        body={"type": "file", "format": "text", "content": "on the home volume"},
    )
    assert saved.status_code in (200, 201), saved.text

    stop_server(hub, "alice", timeout=300)
    wait_until(lambda: simulated(cloud, iid)["phase"] == "stopped", 300, "the machine's stop")
    assert instances_of(cloud, "alice")[0]["State"]["Name"] == "stopped"
    volume = simulated(cloud, iid)["volumeDir"]

    start_server(hub, "alice", OPTIONS, timeout=600)
    again = simulated(cloud, iid)
    assert again["boots"] == 2 and again["volumeDir"] == volume
    kept = contents(hub, "alice", "kept.txt")
    assert kept.status_code == 200 and kept.json()["content"] == "on the home volume"
    log = (cloud.state_dir / "instances.log").read_text()
    assert log.count(f"{iid} machine booted") == 2  # the bootstrap ran at each boot
    print(f"boot to notebook through the hub: {boot_to_notebook:.1f} s")
    stop_server(hub, "alice", timeout=300)
