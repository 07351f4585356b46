"""The hub as an operator starts it: the demo command, and start-up refusals that name the
environment variable or the communities file, community and key at fault."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from .harness import (
    PORTS_FILE,
    REPO,
    free_port,
    hub_env,
    hub_test_config,
    start_hub,
    stop_group,
    wait_until,
)

pytestmark = pytest.mark.integration


def run_hub_expecting_failure(env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "jupyterhub", "-f", str(REPO / "jupyterhub_config.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


def test_bad_communities_file_stops_the_hub_naming_file_community_and_key(cloud, tmp_path):
    shipped = (REPO / "hub_config" / "communities.yaml").read_text()
    bad = tmp_path / "communities.yaml"
    bad.write_text(shipped.replace("default: t3.large", "default: t3.gigantic", 1))
    output = run_hub_expecting_failure(hub_env(cloud, tmp_path, SNH_COMMUNITIES_FILE=str(bad)))
    assert str(bad) in output
    assert "community 'ad-portal' (team 3500001)" in output
    assert "instance_types.default" in output
    assert "Traceback" not in output


def test_missing_environment_variable_stops_the_hub_naming_it(cloud, tmp_path):
    env = hub_env(cloud, tmp_path)
    del env["SYNAPSE_CLIENT_SECRET"]
    output = run_hub_expecting_failure(env)
    assert "SYNAPSE_CLIENT_SECRET is not set" in output
    assert "Traceback" not in output


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_runs_and_ctrl_c_leaves_no_process_behind(tmp_path):
    hub_url = f"http://127.0.0.1:{free_port()}"
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localcloud",
            "--state-dir",
            str(tmp_path),
            "--hub-url",
            hub_url,
            "--synapse-port",
            "0",
            "demo",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:

        def healthy() -> bool:
            try:
                return requests.get(f"{hub_url}/hub/health", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(healthy, 60, "the demo hub")
        endpoints = (tmp_path / "endpoints.json").read_text()
        assert '"synapse"' in endpoints and hub_url in endpoints
        login = requests.get(f"{hub_url}/hub/oauth_login", timeout=10)
        assert 'name="username"' in login.text  # the stand-in's sign-in form
        state = Path(tmp_path / "hub")
        pids = [
            int((state / name).read_text()) for name in ("jupyterhub.pid", "jupyterhub-proxy.pid")
        ]
        assert all(_alive(pid) for pid in pids)
        time.sleep(0.5)
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        output, _ = demo.communicate(timeout=60)
        assert "Open " + hub_url in output and "alice" in output
        wait_until(lambda: not any(_alive(pid) for pid in pids), 10, "hub and proxy to exit")
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)


def test_a_hub_killed_before_it_stopped_its_proxy_leaves_nothing_behind(cloud, tmp_path):
    """The harness's own promise, which every later hub of a session depends on: JupyterHub
    starts configurable-http-proxy and managed services in sessions of their own, so killing
    the hub's process group does not reach them. A hub killed at once (no time to handle
    SIGTERM, as when a loaded machine makes it outlive the wait) must not leave its proxy
    holding the session's public port; a CI run once lost 57 tests to such an orphan."""
    env = hub_env(cloud, tmp_path, SNH_EXTRA_CONFIG=str(hub_test_config(tmp_path)))
    hub = start_hub(env, tmp_path / "hub.log")
    started = psutil.Process(hub.proc.pid).children(recursive=True)
    assert any("configurable-http-proxy" in " ".join(p.cmdline()) for p in started)
    stop_group(hub.proc, timeout=0)
    wait_until(
        lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in started),
        30,
        "the hub's proxy and services to be gone",
    )
    # and the next hub of the session starts on the same public URL
    again = start_hub(env, tmp_path / "hub.log")
    again.stop()


@pytest.mark.parametrize("taken", ["hub_api", "proxy_api"])
def test_a_private_port_taken_before_the_hub_binds_it_is_chosen_again(cloud, tmp_path, taken):
    """The harness's ports are free when `hub_test_config` chooses them, not necessarily when
    the hub binds them seconds later: on two busy cores the other worker's tunnels and local
    cloud bind ephemeral ports meanwhile. A CI-like run under load once lost a whole module
    to its hub failing to start. Here the port is taken on purpose; the hub must come up on
    a fresh one, and the one that was taken must not be used."""
    config = hub_test_config(tmp_path)
    ports_file = config.with_name(PORTS_FILE)
    port = json.loads(ports_file.read_text())[taken]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        hub = start_hub(
            hub_env(cloud, tmp_path, SNH_EXTRA_CONFIG=str(config)), tmp_path / "hub.log"
        )
        try:
            assert requests.get(f"{hub.url}/hub/health", timeout=30).status_code == 200
            now = json.loads(ports_file.read_text())[taken]
            assert now != port
        finally:
            hub.stop()
