"""`snh forward` carries a browser session to JupyterLab through the SSM
stand-in: the page, its many assets and the kernel's websocket all cross the tunnel."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.harness import REPO, free_port, stop_group, wait_until
from tests.integration.ssm_harness import INSTANCE_ID, start_ssm_standin

from .conftest import SCREENSHOTS

pytestmark = pytest.mark.browser

TOKEN = "forward-browser-test-token"


@pytest.fixture
def jupyterlab(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={tmp_path}",
            "--ServerApp.open_browser=False",
            "--allow-root",  # CI runs as root
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "jupyterlab.log").open("wb"),
        start_new_session=True,
        env={**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg")},
    )
    yield f"127.0.0.1:{port}"
    stop_group(proc)


def test_jupyterlab_through_the_forward_command(browser, jupyterlab):
    standin = start_ssm_standin(jupyterlab)
    local_port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    forward = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "operations",
            "forward",
            "--target",
            INSTANCE_ID,
            "--remote-port",
            "8888",
            "--local-port",
            str(local_port),
            "--region",
            "us-east-1",
            "--endpoint-url",
            standin.address,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        ready = forward.stdout.readline()
        assert f"127.0.0.1:{local_port}" in ready and INSTANCE_ID in ready
        page = browser.new_page()
        page.set_default_timeout(60_000)

        def lab_up() -> bool:
            try:
                return page.goto(f"http://127.0.0.1:{local_port}/lab?token={TOKEN}").ok
            except Exception:
                return False

        wait_until(lab_up, 60, "JupyterLab through the tunnel", interval=1)
        page.locator(".jp-Launcher").first.wait_for()
        page.get_by_text("Python 3", exact=False).first.click()  # a notebook: kernel websocket
        page.get_by_text("Python 3 (ipykernel) | Idle").first.wait_for()  # kernel websocket up
        cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
        cell.wait_for()
        cell.click()
        page.keyboard.type("print(6 * 7)")
        page.keyboard.press("Shift+Enter")
        page.locator(".jp-OutputArea-output", has_text="42").first.wait_for()
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "forward-jupyterlab.png"))
        page.close()
    finally:
        stop_group(forward)
        standin.stop()
    assert forward.returncode == 0  # SIGTERM: session terminated, clean exit
