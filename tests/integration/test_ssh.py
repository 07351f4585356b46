"""SSH into one's own server from one's own computer, with Debian's real OpenSSH client
(``ssh``, ``scp``, ``sftp``) against the local cloud: a real hub, the relay
(`operations.relay`), the hub's Session Manager tunnel to the instance, and the real
``sshd`` (Debian's ``openssh-server``) the simulated instance runs with the images' own
``sshd_config`` (`localcloud.instances.sshd`).

The user does what the README's "From your computer" section says: adds a public key on the
hub's SSH keys page, makes an API token with the ``custom:snh-relay`` scope, runs
``snh login`` and ``snh ssh-config``, then plain ``ssh snh-alice``. Nothing here has AWS
credentials. The simulated server's SSH user is the user running the tests
(``SNH_SSH_USER``), as the demo sets it; in the images it is jovyan.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from localcloud.instances.sshd import local_user
from tests.integration.harness import (
    communities_changed,
    free_port,
    own_hub,
    sign_in,
    stop_group,
    token_for,
    wait_until,
)
from tests.integration.laptop import BIN, Laptop, add_key
from tests.integration.spawn_harness import instances_of, moto, start_server, stop_server

pytestmark = pytest.mark.integration

HUB_ID = "ssh-tests"
#: an app port the community opens besides SSH (for ``snh forward``), chosen per run
APP_PORT = free_port()
ALLOW_APP_PORT = communities_changed(relay_ports=(22, APP_PORT))


def ssm_control(cloud, method: str, path: str) -> dict:
    r = requests.request(method, f"{cloud.endpoints['aws']['ssm_control_url']}{path}", timeout=10)
    r.raise_for_status()
    return r.json() if r.content else {}


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    with own_hub(
        cloud,
        tmp_path_factory.mktemp("hub-ssh"),
        HUB_ID,
        extra=ALLOW_APP_PORT,
        SNH_SSH_USER=local_user(),
    ) as hub:
        yield hub


@pytest.fixture(scope="module")
def alice(hub, cloud, tmp_path_factory):
    """alice's laptop, her key on the hub's page, her running server with a file in it."""
    laptop = Laptop(
        tmp_path_factory.mktemp("alice-laptop"),
        hub,
        "alice",
        token_for(hub, "alice", ["custom:snh-relay!user"]),
    )
    session, _ = sign_in(hub, "alice")
    added = add_key(hub, session, laptop.public_key)
    assert added.status_code == 200 and "It works from your server" in added.text, added.text
    start_server(hub, "alice")
    # a file written the notebook's way, through the hub (the Jupyter contents API)
    put = hub.api(
        "PUT",
        "/../../user/alice/api/contents/results.csv",
        json={"type": "file", "format": "text", "content": "sample,value\nA,1\n"},
    )
    assert put.status_code in (200, 201), put.text
    yield laptop
    stop_server(hub, "alice")


def test_ssh_runs_a_command_in_alices_server_and_sees_her_files(alice) -> None:
    done = alice.ssh("pwd; cat results.csv; echo region=$AWS_REGION")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[1:3] == ["sample,value", "A,1"]
    assert Path(lines[0]).name.startswith("vol-")  # the home volume's directory
    assert lines[3] == "region=us-east-1"  # the session has the server's settings


def test_scp_twenty_megabytes_both_ways_with_matching_digests(alice, tmp_path) -> None:
    data = os.urandom(20 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    upload = tmp_path / "upload.bin"
    upload.write_bytes(data)
    sent = alice.run("scp", str(upload), f"{alice.alias}:upload.bin", timeout=300)
    assert sent.returncode == 0, sent.stderr
    there = alice.ssh("sha256sum upload.bin")
    assert there.stdout.decode().split()[0] == digest
    back = tmp_path / "back.bin"
    got = alice.run("scp", f"{alice.alias}:upload.bin", str(back), timeout=300)
    assert got.returncode == 0, got.stderr
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest


def test_sftp_lists_the_home(alice) -> None:
    done = alice.run("sftp", "-b", "-", alice.alias, input=b"ls -1\n")
    assert done.returncode == 0, done.stderr
    assert "results.csv" in done.stdout.decode().split()


def test_ssh_l_reaches_a_web_server_started_inside_the_server(alice) -> None:
    inside, local = free_port(), free_port()
    # started over SSH, as a user would start an app; it outlives the command
    started = alice.ssh(
        f"nohup {sys.executable} -m http.server {inside} --bind 127.0.0.1 "
        ">/dev/null 2>&1 & echo started"
    )
    assert started.returncode == 0, started.stderr
    tunnel = subprocess.Popen(
        ["ssh", "-F", str(alice.config), "-N", "-L", f"{local}:127.0.0.1:{inside}", alice.alias],
        env=alice.env,
        start_new_session=True,
    )
    try:

        def listing() -> str | None:
            try:
                r = requests.get(f"http://127.0.0.1:{local}/", timeout=5)
            except requests.RequestException:
                return None
            return r.text if r.status_code == 200 else None

        page = wait_until(listing, 60, "the app through ssh -L")
        assert "results.csv" in page  # http.server lists the home it was started in
    finally:
        stop_group(tunnel)
        alice.ssh(f"pkill -f 'http.server {inside}' || true")


def test_snh_forward_reaches_an_app_port_the_community_opens(alice) -> None:
    started = alice.ssh(
        f"nohup {sys.executable} -m http.server {APP_PORT} --bind 127.0.0.1 "
        ">/dev/null 2>&1 & echo started"
    )
    assert started.returncode == 0, started.stderr
    local = free_port()
    forward = subprocess.Popen(
        [str(BIN / "snh"), "forward", "--remote-port", str(APP_PORT), "--local-port", str(local)],
        env=alice.env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )
    try:

        def listing() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{local}/", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        wait_until(listing, 60, "the app through snh forward")
    finally:
        stop_group(forward)
        alice.ssh(f"pkill -f 'http.server {APP_PORT}' || true")


def test_an_ssh_session_survives_a_cut_of_the_hubs_websocket(alice, cloud) -> None:
    """The relay's tunnel is the resumable Session Manager tunnel of the tunnel issue: when
    the websocket to the service is cut, the hub reconnects and resumes the session; the SSH
    connection over it neither breaks nor loses a byte."""
    session = subprocess.Popen(
        [
            "ssh",
            "-F",
            str(alice.config),
            alice.alias,
            "for i in $(seq 1 40); do echo line $i; sleep 0.25; done",
        ],
        env=alice.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert session.stdout is not None
    first = session.stdout.readline()
    assert first == b"line 1\n", first + session.stderr.read()
    relay_sessions = [
        s["SessionId"]
        for s in ssm_control(cloud, "GET", "/state")["sessions"]
        if s.get("Status") == "Connected" and "2222" in json.dumps(s)
    ]
    assert relay_sessions, "no Session Manager session to the instance's sshd"
    for sid in relay_sessions:
        ssm_control(cloud, "POST", f"/sessions/{sid}/drop")
    rest, errors = session.communicate(timeout=120)
    assert session.returncode == 0, errors
    assert (first + rest).decode().splitlines() == [f"line {i}" for i in range(1, 41)]


def test_ssh_work_is_activity_of_the_server_itself(alice, hub) -> None:
    """The instance's backstop reads the notebook's own ``/api/status``, not the hub: SSH
    work (here a command whose output travels back) moves that ``last_activity`` too (the
    images' busy-activity rule watches the sshd's bytes), so a server used over SSH alone is
    not stopped by its backstop."""

    def last_activity() -> dt.datetime:
        r = hub.api("GET", "/../../user/alice/api/status")
        assert r.status_code == 200, r.text
        return dt.datetime.fromisoformat(r.json()["last_activity"].replace("Z", "+00:00"))

    before = last_activity()
    done = alice.ssh("for i in 1 2 3 4 5 6 7 8; do head -c 3000 /dev/zero | base64; sleep 1; done")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: last_activity() > before, 60, "the notebook to count the SSH work")


def test_a_key_not_on_the_owners_list_is_refused_by_sshd(alice, hub, tmp_path) -> None:
    """Another key (bob's laptop, say) with alice's own relay token: the relay carries the
    connection, sshd refuses the key."""
    stranger = tmp_path / "id_other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    config = alice.config.read_text().replace(str(alice.key), str(stranger))
    other = tmp_path / "config"
    other.write_text(config)
    done = subprocess.run(
        ["ssh", "-F", str(other), alice.alias, "true"],
        env=alice.env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 255
    assert b"Permission denied (publickey)" in done.stderr


def test_the_key_and_the_user_data_stay_apart(alice, cloud) -> None:
    """Keys reach the server in its parameters, never in user data (readable with
    ``DescribeInstanceAttribute`` for the instance's lifetime)."""
    [instance] = [
        i for i in instances_of(cloud, "alice", hub_id=HUB_ID) if i["State"]["Name"] == "running"
    ]
    user_data = moto(cloud, "ec2").describe_instance_attribute(
        InstanceId=instance["InstanceId"], Attribute="userData"
    )["UserData"]["Value"]
    key_data = alice.public_key.split()[1]
    assert key_data not in base64.b64decode(user_data).decode("utf-8", "replace")


def test_ssh_to_a_server_that_is_not_running_says_how_to_start_it(hub, tmp_path_factory):
    laptop = Laptop(
        tmp_path_factory.mktemp("bob-laptop"),
        hub,
        "bob",
        token_for(hub, "bob", ["custom:snh-relay!user"]),
    )
    done = laptop.ssh("true", timeout=120)
    assert done.returncode == 255
    assert b"is not running: start it on the hub's home page" in done.stderr
