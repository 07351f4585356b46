"""Budgets against a real hub (`operations.budget` through ``EC2Spawner.budget_check``): once
a community's month's spend reaches its budget, the spawn form says so and a start through
REST is refused before anything is launched, naming the budget, the spend and the community
managers; the home page shows the user's spend with the same words. The community's budget
here is tiny, so that a few seconds of a t3.large (and its volumes) reach it."""

from __future__ import annotations

import html
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import yaml

from tests.integration.harness import (
    communities_changed,
    hub_env,
    own_hub,
    sign_in,
    wait_until,
)
from tests.integration.spawn_harness import (
    instances_of,
    server_model,
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


#: NF Open Science asks for running servers to be stopped over budget, one minute after
#: the warning (the hub's idle timeout is 5 minutes here, so the warning may be that short)
STOPPING_BUDGET = communities_changed(
    "nf-osc",
    budget_usd_per_month=0.0001,
    stop_over_budget=True,
    idle_warning_minutes=1,
    managers=("nf-managers@example.org",),
)


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory, inbox):
    state = tmp_path_factory.mktemp("hub-budget")
    with own_hub(
        cloud,
        state,
        HUB_ID,
        extra=TINY_BUDGET + STOPPING_BUDGET,
        IDLE_TIMEOUT_SECONDS="300",
        SNH_SMTP_HOST="127.0.0.1",
        SNH_SMTP_PORT=str(inbox.port),
        SNH_SMTP_TLS="none",
        SNH_SMTP_FROM="hub@example.org",
    ) as hub:
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

    # the same start through the HTML form: the form comes back with the refusal
    spawn_page = session.get(f"{hub.url}/hub/spawn/alice", timeout=30).text
    assert 'id="spawn_form"' in spawn_page, spawn_page[-2000:]
    posted = session.post(  # as the browser: the form's fields, the XSRF cookie's token
        f"{hub.url}/hub/spawn/alice",
        data={"community": "ad-portal"},
        headers={"X-XSRFToken": session.cookies.get("_xsrf", path="/hub/")},
        timeout=60,
    )
    refused = [r for r in hub.audit_lines("start_refused") if r["user"] == "alice"]
    assert len(refused) >= 2 and "$0.0001, is spent" in refused[-1]["reason"]  # REST, form
    page = html.unescape(posted.text)
    assert "monthly budget of AD Knowledge Portal (demo), $0.0001, is spent" in page, page[-3000:]
    assert "manager@example.org" in page
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


def test_a_community_that_asks_for_it_stops_servers_over_budget_after_a_warning(hub, cloud, inbox):
    """``stop_over_budget``: bob's running server in NF Open Science passes the community's
    tiny budget within seconds; the hub warns him on the home page (no Keep running: a
    budget is not idleness) and by e-mail, then stops the server when the warning's minute
    is up. Stopped, not removed: the instance and its disk stay."""
    session, _ = sign_in(hub, "bob")
    start_server(hub, "bob", {"community": "nf-osc"})

    def budget_notice() -> str | None:
        page = session.get(f"{hub.url}/hub/home", timeout=30).text
        marker = 'data-kind="budget"'
        return html.unescape(page[page.index(marker) :]) if marker in page else None

    notice = wait_until(budget_notice, 120, "the home page's budget notice", interval=1)
    notice = notice[: notice.index("</div>")]
    assert "of the monthly budget of NF Open Science" in notice
    assert "nf-managers@example.org" in notice and "will be stopped at" in notice
    assert "Keep running" not in notice

    def warning_mail() -> list:
        return [e for e in inbox.envelopes if e.rcpt_tos == ["bob@example.org"]]

    [mail] = wait_until(warning_mail, 60, "the warning e-mail")
    message = message_from_bytes(mail.content, policy=policy.default)
    assert message["Subject"].startswith("Your server will be stopped at")
    assert message["Subject"].endswith("(budget)")
    assert "nf-managers@example.org" in message.get_content()

    def stopped() -> bool:
        model = server_model(hub, "bob") or {}
        return not model.get("ready") and not model.get("pending")

    wait_until(stopped, 180, "the budget stop", interval=1)
    [warned] = [r for r in hub.audit_lines("stop_warning") if r["user"] == "bob"]
    assert (warned["user"], warned["kind"], warned["emailed"]) == ("bob", "budget", True)
    [stop] = [r for r in hub.audit_lines("budget_stop") if r["user"] == "bob"]
    assert stop["user"] == "bob" and "NF Open Science" in stop["reason"]
    assert stop["time"] >= warned["stop_at"]
    [instance] = instances_of(cloud, "bob", hub_id=HUB_ID)
    assert instance["State"]["Name"] in ("stopping", "stopped")
