"""What a user sees in JupyterLab before the idle culler stops their server: the images'
``snh-stop-notice`` extension (images/shared: a prebuilt JupyterLab extension and the
notebook server's ``snh/stop-notice``) shows JupyterLab's own notification with **Keep
running**; pressing it keeps the server (the hub records activity) and the hub's audit log
says it came from JupyterLab.

The hub's idle timeout is 60 s here, so the warning comes in the last 30 s; its cullers look
only hourly, so no cull races the button on a loaded machine (the cull itself is tested in
``tests/integration/test_keep_running.py``). The tab is put
in the background, as a user who left it would have it: JupyterLab's own requests then
pause (a visible JupyterLab tab polls the server, and jupyter-server counts that as use),
while the extension keeps asking."""

from __future__ import annotations

import pytest

from tests.integration.harness import hub_env, hub_test_config, start_hub, wait_until
from tests.integration.spawn_harness import server_model, start_server

from .conftest import SCREENSHOTS
from .test_signin_browser import sign_in_with_browser

pytestmark = pytest.mark.browser

IDLE_TIMEOUT = 60

#: What a browser does when its tab goes to the background (JupyterLab's polls listen).
HIDE_TAB = """() => {
  Object.defineProperty(document, "visibilityState", { get: () => "hidden" });
  Object.defineProperty(document, "hidden", { get: () => true });
  document.dispatchEvent(new Event("visibilitychange"));
}"""


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    state = tmp_path_factory.mktemp("hub-stop-notice")
    extra = "c.Spawner.poll_interval = 1\nc.JupyterHub.last_activity_interval = 2\n"
    env = hub_env(
        cloud,
        state,
        SNH_HUB_ID="stop-notice-tests",
        SNH_EXTRA_CONFIG=str(hub_test_config(state, extra=extra)),
        IDLE_TIMEOUT_SECONDS=str(IDLE_TIMEOUT),
        CULL_EVERY_SECONDS="3600",
    )
    hub = start_hub(env, state / "hub.log")
    yield hub
    hub.stop()


def test_jupyterlab_warns_before_the_cull_and_keep_running_keeps_the_server(page, hub):
    sign_in_with_browser(page, hub, "alice")
    page.wait_for_url(f"{hub.url}/hub/home")
    start_server(hub, "alice", {"community": "ad-portal", "image": "jupyter"})
    page.goto(f"{hub.url}/user/alice/lab")
    page.wait_for_url("**/user/alice/lab**")
    page.locator(".jp-LabShell").wait_for(timeout=60_000)
    page.evaluate(HIDE_TAB)

    toast = page.locator(".Toastify__toast", has_text="this server stops at")
    toast.wait_for(timeout=(IDLE_TIMEOUT + 30) * 1000)
    assert "unless you keep it running" in toast.inner_text()
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "jupyterlab-stop-notice.png"))
    before = server_model(hub, "alice")["last_activity"]

    toast.get_by_role("button", name="Keep running").click()
    page.locator(".Toastify__toast", has_text="Kept running").wait_for(timeout=30_000)
    [line] = wait_until(lambda: hub.audit_lines("keep_running"), 30, "the audit line")
    assert (line["user"], line["via"], line.get("outcome")) == ("alice", "jupyterlab", None)
    after = server_model(hub, "alice")
    assert after["ready"] and after["last_activity"] > before
    # the warning is gone from JupyterLab (and comes back only in the next idle period)
    wait_until(lambda: toast.count() == 0, 30, "the warning to go")
