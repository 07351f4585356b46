"""The hub with real-boot instances (``python -m localcloud --real-boot serve``): JupyterHub's
start, stop and start again of alice's server, where her instance is a booted Debian machine
that runs the hub's user data, the bootstrap and the notebook image itself
(``localcloud.instances.realboot``), reached through its SSM agent's link.

What is checked is what a user of the hub sees and what EC2 would show: the notebook answers
through the proxy; synapseclient in the container logs in with no arguments (the token read
from the server's parameter with the instance role, Synapse at its public names), and the
Synapse token is nowhere on the machine; after a stop the machine is off and the instance
stopped; after a start it booted again (the bootstrap ran a second time) with the same home
volume and its files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

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
from .spawn_harness import (
    Kernel,
    contents,
    instances_of,
    moto,
    simulated,
    start_server,
    stop_server,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("systemd-nspawn"),
        reason="real-boot machines need root and systemd-nspawn (make test installs it)",
    ),
]
OPTIONS = {"community": "ad-portal", "image": "jupyter"}
PARAMETERS = "/synapse-notebook-hub/synapse-notebook-hub/alice/_/"
#: What a user types in a notebook (synapseclient's documented "login with no arguments":
#: its credential chain reads SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME with the AWS SDK).
LOGIN = """
import synapseclient
syn = synapseclient.Synapse()
syn.login(silent=True)
print("logged in as", syn.credentials.username)
"""


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

    kernel = Kernel(hub, "alice")
    try:
        printed = kernel.run(LOGIN, timeout=180)
    finally:
        kernel.close()
    assert printed.strip().splitlines()[-1] == "logged in as alice", printed
    ssm = moto(cloud, "ssm")
    synapse_token = ssm.get_parameter(Name=PARAMETERS + "synapse-token", WithDecryption=True)
    env = ssm.get_parameter(Name=PARAMETERS + "jupyterhub-env", WithDecryption=True)
    hub_token = json.loads(env["Parameter"]["Value"])["JUPYTERHUB_API_TOKEN"]
    machine = simulated(cloud, iid)["machine"]
    where = places_on_the_machine(machine, simulated(cloud, iid)["volumeDir"])
    token = synapse_token["Parameter"]["Value"].encode()
    assert len(token) > 20 and b"notebook container started" in where["journal"]
    assert b"SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME=" + PARAMETERS.encode() in where["podman inspect"]
    assert [place for place, text in where.items() if token in text] == []
    # the hub's API token reaches the container's environment (docker's --env-file), so the
    # container engine's records have it, as docker's have on AWS; never logs or the volume
    hub_token_at = [p for p, text in where.items() if hub_token.encode() in text]
    assert not [p for p in hub_token_at if p.startswith(("journal", "home volume"))], hub_token_at

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


def places_on_the_machine(machine: dict, volume_dir: str) -> dict[str, bytes]:
    """Where a secret must not be: the machine's journal (all boots), what ``podman
    inspect`` shows of the notebook container, and every file of the machine's root volume
    (its overlay's upper directory and container storage) and of the home volume."""
    inside = ["nsenter", f"--target={machine['leader']}", "--all"]
    places = {
        "journal": run([*inside, "journalctl", "--no-pager", "--output=cat"]),
        "podman inspect": run([*inside, "podman", "container", "inspect", "notebook"]),
    }
    roots = [("root volume", Path(machine["dir"]) / d) for d in ("upper", "containers")]
    for name, root in [*roots, ("home volume", Path(volume_dir))]:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                places[f"{name}: {path.relative_to(root)}"] = path.read_bytes()
    return places


def run(command: list[str]) -> bytes:
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
