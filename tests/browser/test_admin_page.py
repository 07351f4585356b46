"""The admin's servers overview (``/hub/servers-overview``) in a browser: an admin sees a row
per server with user, community, image, instance type, EC2's state, uptime, last activity and
the month's estimated cost, truthfully for one running and one stopped server; a user who is
not an admin is refused (403), as JupyterHub refuses its own admin page without the
``admin-ui`` scope (JupyterHub docs, "Available scopes")."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from tests.integration.harness import own_hub, sign_in
from tests.integration.spawn_harness import start_server, stop_server

from .conftest import SCREENSHOTS
from .test_signin_browser import sign_in_with_browser

pytestmark = pytest.mark.browser

HUB_ID = "admin-page-test"  # its own instances: only this module's servers are listed
SCREENSHOT = "/tmp/admin-page.png"


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    with own_hub(cloud, tmp_path_factory.mktemp("hub-admin-page"), HUB_ID) as hub:
        yield hub


@pytest.fixture(scope="module")
def servers(hub):
    """alice (admin, ad-portal): Jupyter on a t3.xlarge, running; bob (nf-osc): RStudio on
    an m5.large, started and stopped."""
    for user in ("alice", "bob"):
        sign_in(hub, user)
    alice = {"community": "ad-portal", "image": "jupyter", "instance_type": "t3.xlarge"}
    bob = {"community": "nf-osc", "image": "rstudio", "instance_type": "m5.large"}
    running = start_server(hub, "alice", alice)
    stopped = start_server(hub, "bob", bob)
    stop_server(hub, "bob")
    yield {"alice": running["state"]["instance_id"], "bob": stopped["state"]["instance_id"]}
    stop_server(hub, "alice")


def cells(row) -> dict[str, str]:
    headers = ["user", "server", "community", "image", "type", "state", "hub", "uptime",
               "activity", "cost", "instance"]  # fmt: skip
    texts = [" ".join(t.split()) for t in row.locator("td").all_inner_texts()]
    return dict(zip(headers, texts, strict=True))


def test_an_admin_sees_every_server_truthfully(page, hub, servers):
    sign_in_with_browser(page, hub, "alice")
    page.wait_for_url(f"{hub.url}/hub/home")
    response = page.goto(f"{hub.url}/hub/servers-overview")
    assert response is not None and response.status == 200
    table = page.locator("#servers-overview-table")
    table.wait_for()
    page.screenshot(path=SCREENSHOT, full_page=True)

    rows = table.locator("tbody tr[data-user]")
    assert rows.count() == 2
    running = cells(table.locator("tr[data-user='alice']"))
    assert running["server"] == "default" and running["community"] == "ad-portal"
    assert running["image"] == "jupyter" and running["type"] == "t3.xlarge"
    assert running["state"] == "running" and running["hub"] == "running"
    assert re.fullmatch(r"<1m|\d+m", running["uptime"]), running
    assert running["activity"].endswith("ago"), running
    assert re.fullmatch(r"\$\d+\.\d\d", running["cost"]), running
    assert running["instance"].startswith(servers["alice"])

    stopped = cells(table.locator("tr[data-user='bob']"))
    assert stopped["community"] == "nf-osc" and stopped["image"] == "rstudio"
    assert stopped["type"] == "m5.large"
    removal = dt.datetime.now(dt.UTC) + dt.timedelta(days=60)  # nf-osc's dormancy_days
    assert stopped["state"] == f"stopped removed on {removal:%Y-%m-%d}", stopped
    assert stopped["hub"] == "stopped" and stopped["uptime"] == ""
    assert re.fullmatch(r"\$\d+\.\d\d", stopped["cost"]), stopped
    assert stopped["instance"].startswith(servers["bob"])
    assert "2 server(s), 1 running" in page.locator("#servers-overview").inner_text()


def test_a_user_who_is_not_an_admin_is_refused(page, hub, servers):
    sign_in_with_browser(page, hub, "bob")
    page.wait_for_url(f"{hub.url}/hub/home")
    # his home page says when his stopped server goes, under the Start button
    line = page.locator("#start ~ .snh-stopped-line, #start + .snh-stopped-line")
    line.wait_for()
    assert re.fullmatch(
        r"Your server: Stopped since \d+ \w+ \d{4}, \d\d:\d\d UTC, "
        r"will be removed on \d+ \w+ \d{4}\.",
        " ".join(line.inner_text().split()),
    )
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "home-stopped-line.png"), full_page=True)

    response = page.goto(f"{hub.url}/hub/servers-overview")
    assert response is not None and response.status == 403
    assert page.locator("#servers-overview-table").count() == 0
