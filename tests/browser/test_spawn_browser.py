"""The whole product as an analyst sees it: sign in with Synapse, pick Jupyter and an instance
type, Start, watch the progress, land in JupyterLab on the (simulated) instance, and log in to
Synapse from a notebook cell with no arguments."""

from __future__ import annotations

import pytest

from tests.integration.spawn_harness import stop_server

from .conftest import SCREENSHOTS
from .test_signin_browser import sign_in_with_browser

pytestmark = pytest.mark.browser

CELL = """import synapseclient
syn = synapseclient.Synapse()
syn.login()
print("signed in as", syn.credentials.username)"""


def run_cell(page, code: str) -> None:
    cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    cell.click()
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")


def test_alice_starts_jupyter_and_talks_to_synapse_as_herself(page, hub):
    page.set_default_timeout(90_000)
    sign_in_with_browser(page, hub, "alice")
    page.wait_for_url(f"{hub.url}/hub/home")
    page.get_by_text("Start My Server").click()
    page.wait_for_url("**/hub/spawn/alice")
    page.select_option("#snh-ad-portal-image", "jupyter")
    page.select_option("#snh-ad-portal-instance_type", "t3.xlarge")
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "spawn-form.png"), full_page=True)
    page.locator("form input[type=submit], form button[type=submit]").first.click()

    page.wait_for_url("**/hub/spawn-pending/alice**")
    page.locator("#progress-message", has_text="…").first.wait_for()
    page.screenshot(path=str(SCREENSHOTS / "spawn-progress.png"), full_page=True)

    page.wait_for_url("**/user/alice/lab**")
    page.locator(".jp-Launcher").first.wait_for()
    page.get_by_text("Python 3", exact=False).first.click()
    page.get_by_text("Python 3 (ipykernel) | Idle").first.wait_for()
    run_cell(page, CELL)
    page.locator(".jp-OutputArea-output", has_text="signed in as alice").first.wait_for()
    page.screenshot(path=str(SCREENSHOTS / "jupyterlab-synapse-login.png"), full_page=True)
    stop_server(hub, "alice")
