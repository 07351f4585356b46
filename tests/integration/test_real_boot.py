"""The hub with real-boot instances (``python -m localcloud --real-boot serve``): JupyterHub's
start, stop and start again of alice's server, where her instance is a booted Debian machine
that runs the hub's user data, the bootstrap and the notebook image itself
(``localcloud.instances.realboot``), reached through its SSM agent's link.

What is checked is what a user of the hub sees and what EC2 would show: the notebook answers
through the proxy; synapseclient in the container logs in with no arguments (the token read
from the server's parameter with the instance role, Synapse at its public names), and the
Synapse token is nowhere on the machine; after a stop the machine is off and the instance
stopped; after a start it booted again (the bootstrap ran a second time) with the same home
volume and its files. A start whose bootstrap gives up (an image that is not a notebook
image) fails with the bootstrap's reason, which the instance's console shows too. A reboot
behind the hub's back brings the notebook back through the hub's tunnel; the idle backstop
inside the machine powers it off, and the hub sees the instance stopped by its guest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from localcloud.instances.realboot import DEFAULT_CACHE
from localcloud.machines.image import BASE_NAME, ensure_image
from localcloud.machines.rootfs import INSTANCE_PACKAGES, RootfsSpec, ensure_rootfs

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
    front,
    instances_of,
    moto,
    server_model,
    simulated,
    spawn_error,
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
#: nf-osc's images, in this hub: the machines' Debian base (in their image store, so there is
#: nothing to pull), which has no jupyterhub-singleuser: a bad image, found out at once.
NOT_A_NOTEBOOK = f"{BASE_NAME}:bookworm"
#: The backstop's timer every 5 s instead of 5 minutes (a runtime drop-in: gone at the boot
#: after; the limit itself is the hub's, in server.conf). One empty assignment resets every
#: trigger of the timer (systemd.timer), so only the first line is one.
SOONER_BACKSTOP = """
set -e
dir=/run/systemd/system/notebook-backstop.timer.d
mkdir -p "$dir"
printf '%s\\n' '[Timer]' OnBootSec= OnActiveSec=5s OnUnitActiveSec=5s \\
  AccuracySec=1s >"$dir/50-test.conf"
systemctl daemon-reload
systemctl restart notebook-backstop.timer
"""
#: ad-portal's backstop limit in this hub (the timer first fires 5 minutes after a boot, so
#: only the backstop test, which makes it fire every 5 s, meets it)
BACKSTOP_SECONDS = 15
HUB_CONFIG = f"""
import dataclasses, os
from hub_config import load_communities
_loaded = load_communities(os.environ["SNH_COMMUNITIES_FILE"])
c.EC2Spawner.communities = dataclasses.replace(
    _loaded,
    communities=tuple(
        dataclasses.replace(
            x, images=tuple(dataclasses.replace(i, image={NOT_A_NOTEBOOK!r}) for i in x.images)
        )
        if x.id == "nf-osc"
        else x
        for x in _loaded.communities
    ),
)
c.EC2Spawner.bootstrap_check_interval = 2
c.EC2Spawner.backstop_idle_seconds = {{"ad-portal": {BACKSTOP_SECONDS}}}
"""
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
    # the machines' root file system and notebook image first (cached; minutes only the first
    # time on a machine, with a lock shared by test workers), so that the cloud starts at once
    ensure_image(
        DEFAULT_CACHE, ensure_rootfs(DEFAULT_CACHE, RootfsSpec(packages=INSTANCE_PACKAGES))
    )
    cloud = start_localcloud(
        tmp_path_factory.mktemp("localcloud"), hub_url, "--boot-delay", "0", "--real-boot"
    )
    yield cloud
    cloud.stop()


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    """The hub's API where the local cloud's machines reach it (``hub_api=False``)."""
    state = tmp_path_factory.mktemp("hub")
    config = hub_test_config(state, hub_api=False, extra=HUB_CONFIG)
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
    # (the checks name places, never print what they hold: a token would end up in a log)
    assert len(token) > 20, "the Synapse token parameter is not a token"
    assert b"notebook container started" in where["journal"], "not the bootstrap's journal"
    named = b"SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME=" + PARAMETERS.encode()
    assert named in where["podman inspect"], "not the notebook container's configuration"
    # the image's contract as images/jupyter's: its entrypoint ran the sshd hook (alice has no
    # SSH key: it says so, and starts none), and the server has the shared extensions
    assert b"before-notebook.d: no SSH keys for this server" in where["journal"], "no hook ran"
    extensions = inside(
        machine, "podman", "exec", "notebook", "jupyter", "server", "extension", "list"
    )
    for extension in (b"notebook_busy_activity", b"notebook_stop_notice"):
        assert re.search(extension + rb".*enabled", extensions), extension
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
    memory = machine_memory(simulated(cloud, iid)["machine"]["leader"])
    print(f"boot to notebook through the hub: {boot_to_notebook:.1f} s; machine {memory}")
    stop_server(hub, "alice", timeout=300)


def test_a_start_the_bootstrap_gives_up_fails_with_its_reason(cloud, hub):
    """The bootstrap's ``docker run`` of an image without ``jupyterhub-singleuser`` fails;
    the bootstrap says so on the console, and the hub, which reads the console
    (``GetConsoleOutput``) while it waits, fails the start with that reason at once instead
    of at its start timeout."""
    sign_in(hub, "bob")
    started = time.monotonic()
    message = spawn_error(hub, "bob", {"community": "nf-osc", "image": "jupyter"})
    failed_after = time.monotonic() - started
    reason = f"cannot run the notebook container of {NOT_A_NOTEBOOK}: "
    assert f"could not start the notebook: {reason}" in message, message
    assert "jupyterhub-singleuser" in message, message
    (instance,) = instances_of(cloud, "bob")
    console = front(cloud, "ec2").get_console_output(
        InstanceId=instance["InstanceId"], Latest=True
    )["Output"]
    assert "notebook-bootstrap: failed at " in console and reason in console
    print(f"a start the bootstrap gave up failed after {failed_after:.1f} s")


def test_a_reboot_behind_the_hubs_back_brings_the_notebook_back(cloud, hub):
    """Someone reboots alice's instance in the EC2 console (RebootInstances, not through
    the hub): the machine boots again and the bootstrap runs again with the server's
    parameters; the hub's tunnel, whose agent went away and came back, carries her requests
    again, and the hub still shows her server running."""
    start_server(hub, "alice", OPTIONS, timeout=600)
    (instance,) = instances_of(cloud, "alice")
    iid = instance["InstanceId"]
    boots = simulated(cloud, iid)["boots"]
    front(cloud, "ec2").reboot_instances(InstanceIds=[iid])

    def back() -> bool:
        now = simulated(cloud, iid)
        return now["boots"] > boots and now["phase"] == "running" and now["agentOnline"]

    wait_until(back, 300, "the machine's new boot", interval=0.5)
    wait_until(
        lambda: contents(hub, "alice", "kept.txt").status_code == 200,
        300,
        "her notebook through the hub after the reboot",
        interval=1,
    )
    assert contents(hub, "alice", "kept.txt").json()["content"] == "on the home volume"
    assert (server_model(hub, "alice") or {}).get("ready")
    log = (cloud.state_dir / "instances.log").read_text()
    assert f"{iid} machine booted (boot {boots + 1} " in log


def test_the_backstop_inside_the_machine_stops_an_idle_server(cloud, hub):
    """The bootstrap's backstop timer in the machine (every 5 minutes; every 5 s here, by a
    runtime drop-in) finds the notebook idle past the limit the hub wrote into
    ``server.conf`` (15 s here), says so on the console and shuts the machine down; EC2
    stops the instance with the guest's reason (``Client.InstanceInitiatedShutdown``) and
    the hub sees the server stopped."""
    sign_in(hub, "alice")
    if not (server_model(hub, "alice") or {}).get("ready"):
        start_server(hub, "alice", OPTIONS, timeout=600)
    (instance,) = instances_of(cloud, "alice")
    iid = instance["InstanceId"]
    machine = simulated(cloud, iid)["machine"]
    conf = inside(machine, "cat", "/etc/notebook-hub/server.conf")
    assert f"BACKSTOP_IDLE_SECONDS={BACKSTOP_SECONDS}".encode() in conf
    inside(machine, "sh", "-c", SOONER_BACKSTOP)

    wait_until(
        lambda: (simulated(cloud, iid).get("machine") or {}).get("leader") is None,
        BACKSTOP_SECONDS + 240,
        "the backstop's shutdown",
        interval=1,
    )
    wait_until(
        lambda: not (server_model(hub, "alice") or {}).get("ready"),
        240,
        "the hub to see alice's server stopped",
        interval=1,
    )
    (instance,) = instances_of(cloud, "alice")
    assert instance["State"]["Name"] == "stopped"
    assert instance["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
    console = front(cloud, "ec2").get_console_output(InstanceId=iid, Latest=True)["Output"]
    assert "notebook-backstop: stopping this instance: no notebook activity" in console


def machine_memory(leader: int) -> str:
    """The memory of the machine: its PID 1 and every process under it (its units, the SSM
    agent's unit, podman's conmon and the notebook container, whose PID namespace is nested
    in the machine's), their proportional set sizes summed (shared pages split), and their
    resident sizes."""
    parents: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            parents[int(pid)] = int(stat.rpartition(")")[2].split()[1])
    machine, grew = {leader}, True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in machine} - machine
        machine |= below
        grew = bool(below)
    pss = rss = 0
    for pid in machine:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in rollup.splitlines()[1:])
        pss += int(fields["Pss"].split()[0])
        rss += int(fields["Rss"].split()[0])
    return f"PSS {pss / 1024:.0f} MiB, RSS {rss / 1024:.0f} MiB ({len(machine)} processes)"


def inside(machine: dict, *command: str, check: bool = True) -> bytes:
    """Run ``command`` in the machine (as root, in all its namespaces); its output (a
    machine going down under it is no error with ``check=False``)."""
    return run(["nsenter", f"--target={machine['leader']}", "--all", *command], check=check)


def places_on_the_machine(machine: dict, volume_dir: str) -> dict[str, bytes]:
    """Where a secret must not be: the machine's journal (all boots), what ``podman
    inspect`` shows of the notebook container, and every file of the machine's root volume
    (its overlay's upper directory and container storage) and of the home volume."""
    places = {
        # every field of every entry (a token could be in _CMDLINE as well as MESSAGE)
        "journal": inside(machine, "journalctl", "--no-pager", "--output=export"),
        "podman inspect": inside(machine, "podman", "container", "inspect", "notebook"),
    }
    roots = [("root volume", Path(machine["dir"]) / d) for d in ("upper", "containers")]
    for name, root in [*roots, ("home volume", Path(volume_dir))]:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                with contextlib.suppress(FileNotFoundError):  # gone since the listing
                    places[f"{name}: {path.relative_to(root)}"] = path.read_bytes()
    return places


def run(command: list[str], *, check: bool = True) -> bytes:
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0 or not check, done.stderr[-2000:]
    return done.stdout
