"""Budgets against a real hub (`operations.budget` through ``EC2Spawner.budget_check``): once
a community's month's spend reaches its budget, the spawn form says so and a start through
REST is refused before anything is launched, naming the budget, the spend and the community
managers; the home page shows the user's spend with the same words. The community's budget
here is tiny, so that a few seconds of a t3.large (and its volumes) reach it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.harness import communities_changed, hub_env, own_hub, sign_in, wait_until
from tests.integration.spawn_harness import (
    instances_of,
    spawn_error,
    start_server,
    stop_server,
)
from tests.smtp_inbox import smtp_inbox

pytestmark = pytest.mark.integration

HUB_ID = "budget-tests"
TINY_BUDGET = communities_changed(
    "ad-portal", budget_usd_per_month=0.0001, managers=("manager@example.org",)
)


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    with own_hub(cloud, tmp_path_factory.mktemp("hub-budget"), HUB_ID, extra=TINY_BUDGET) as hub:
        yield hub


def test_a_start_over_the_budget_is_refused_with_who_to_ask(hub, cloud):
    session, _ = sign_in(hub, "alice")
    start_server(hub, "alice", {"community": "ad-portal"})
    stop_server(hub, "alice")
    [instance] = instances_of(cloud, "alice", hub_id=HUB_ID)

    def form_says_over() -> str | None:
        page = session.get(f"{hub.url}/hub/spawn/alice", timeout=30)
        return page.text if "snh-budget-note" in page.text else None

    form = wait_until(form_says_over, 90, "the spawn form to show the budget")
    assert "of the monthly budget of AD Knowledge Portal" in form
    assert "manager@example.org" in form

    message = spawn_error(hub, "alice", {"community": "ad-portal"})
    assert "monthly budget of AD Knowledge Portal (demo), $0.0001, is spent" in message
    assert "manager@example.org" in message and "Running servers keep running" in message
    # refused before any AWS call: the instance was not started again, none was launched
    assert [i["InstanceId"] for i in instances_of(cloud, "alice", hub_id=HUB_ID)] == [
        instance["InstanceId"]
    ]
    assert instances_of(cloud, "alice", hub_id=HUB_ID)[0]["State"]["Name"] in (
        "stopping",
        "stopped",
    )

    home = session.get(f"{hub.url}/hub/home", timeout=30).text
    assert 'id="snh-spend"' in home and "AD Knowledge Portal (demo): $" in home
    assert "estimated from list prices of" in home


def test_the_report_page_and_the_managers_email(hub, cloud, tmp_path):
    """After the first test's run: the reports page (an operator's, alice's) lists alice's
    server with its hours and cost, as CSV too; ``snh report --email`` (as the hub's service
    or a monthly timer runs it) sends the same report to the managers through a real SMTP
    server on loopback."""
    session, _ = sign_in(hub, "alice")
    page = session.get(f"{hub.url}/hub/reports?community=ad-portal", timeout=30)
    assert page.status_code == 200 and 'id="snh-report-table"' in page.text
    assert "estimated from list prices of" in page.text
    rows = session.get(
        f"{hub.url}/hub/reports?community=ad-portal&format=csv", timeout=30
    ).text.splitlines()
    assert rows[0].startswith("user,server,instance_type,hours")
    assert any(r.startswith("alice,,t3.") for r in rows[1:]), rows
    # bob is an analyst, not an operator: no reports
    bob, _ = sign_in(hub, "bob")
    assert bob.get(f"{hub.url}/hub/reports", timeout=30).status_code == 403

    with smtp_inbox() as (inbox, smtp_port):
        communities = yaml.safe_load(Path(cloud.endpoints["aws"]["communities_file"]).read_text())
        for entry in communities["communities"]:
            if entry["id"] == "ad-portal":
                entry["managers"] = ["manager@example.org"]
        with_managers = tmp_path / "communities.yaml"
        with_managers.write_text(yaml.safe_dump(communities))
        env = {
            **hub_env(cloud, hub.log_path.parent),
            "SNH_HUB_ID": HUB_ID,
            "SNH_COMMUNITIES_FILE": str(with_managers),
            "SNH_SMTP_HOST": "127.0.0.1",
            "SNH_SMTP_PORT": str(smtp_port),
            "SNH_SMTP_TLS": "none",
            "SNH_SMTP_FROM": "hub@example.org",
        }
        done = subprocess.run(
            [sys.executable, "-m", "operations", "report", "--community", "ad-portal", "--email"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "ad-portal: " in done.stdout and "sent to manager@example.org" in done.stdout
        wait_until(lambda: inbox.envelopes, 30, "the report e-mail")
        [envelope] = inbox.envelopes
        assert envelope.rcpt_tos == ["manager@example.org"]
        body = envelope.content.decode("utf-8", "replace")
        assert "AD Knowledge Portal (demo)" in body and "alice" in body
