"""The warning before a cull and **Keep running** (`operations.keep_running`), with a real
hub, its idle culler and a simulated server: idle timeout 60 s (the warning then comes in
the last 30 s, half the timeout), ``keep_running_hours`` 0.015 (54 s after the last use).
The home page warns; the button keeps the server past its first cull time and is audited;
once the bound is passed, it is refused with the reason (audited too) and the culler stops
the server as usual."""

from __future__ import annotations

import time
from email import message_from_bytes, policy
from pathlib import Path

import pytest
import yaml

from tests.integration.harness import (
    FormParser,
    hub_env,
    hub_test_config,
    sign_in,
    start_hub,
    wait_until,
)
from tests.integration.spawn_harness import server_model, start_server

pytestmark = pytest.mark.integration

HUB_ID = "keep-running-tests"
IDLE_TIMEOUT = 60
#: 54 s after the last use: a grant fits between the warning (30 s) and the bound, and the
#: refusals between the bound and the cull (at least 90 s), each with 20 s to spare or more
LIMIT_HOURS = 0.015


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory, inbox):
    state = tmp_path_factory.mktemp("hub-keep-running")
    communities = yaml.safe_load(Path(cloud.endpoints["aws"]["communities_file"]).read_text())
    for entry in communities["communities"]:
        entry["keep_running_hours"] = LIMIT_HOURS
    path = state / "communities.yaml"
    path.write_text(yaml.safe_dump(communities))
    extra = "c.Spawner.poll_interval = 1\nc.JupyterHub.last_activity_interval = 2\n"
    env = hub_env(
        cloud,
        state,
        SNH_HUB_ID=HUB_ID,
        SNH_COMMUNITIES_FILE=str(path),
        SNH_EXTRA_CONFIG=str(hub_test_config(state, extra=extra)),
        IDLE_TIMEOUT_SECONDS=str(IDLE_TIMEOUT),
        CULL_EVERY_SECONDS="2",
        SNH_SMTP_HOST="127.0.0.1",
        SNH_SMTP_PORT=str(inbox.port),
        SNH_SMTP_TLS="none",
    )
    hub = start_hub(env, state / "hub.log")
    yield hub
    hub.stop()


def last_activity(hub) -> float:
    model = server_model(hub, "alice")
    assert model is not None and model.get("ready"), "alice's server is not running"
    return time.mktime(time.strptime(model["last_activity"][:19], "%Y-%m-%dT%H:%M:%S")) - (
        time.timezone
    )


def notice_form(session, hub) -> dict[str, str] | None:
    page = session.get(f"{hub.url}/hub/home", timeout=30).text
    marker = 'class="alert alert-warning snh-cull-notice"'
    if marker not in page:
        return None
    form = FormParser()
    form.feed(page[page.index(marker) :])
    assert "will be stopped at" in page
    return form.fields


def keep_lines(hub) -> list[dict]:
    return hub.audit_lines("keep_running")


def lab_notice(session, hub) -> dict | None:
    """What JupyterLab's extension asks: the notebook server's ``snh/stop-notice``."""
    answer = session.get(f"{hub.url}/user/alice/snh/stop-notice", timeout=30)
    assert answer.status_code == 200, answer.text[:300]
    body = answer.json()
    assert body["poll_seconds"] == 3  # the simulated images ask every 3 s
    return body["notice"]


def test_the_warning_and_keep_running_within_its_bound(hub, inbox):
    """The warning on the home page, through the notebook server (what JupyterLab shows)
    and by e-mail; Keep running from the home page; past the bound, refused on both ways
    (JupyterLab's through the notebook server, with the hub's reason), all audited."""
    session, _ = sign_in(hub, "alice")
    start_server(hub, "alice", {"community": "ad-portal", "image": "jupyter"})
    idle_since = last_activity(hub)
    # the notebook's own sign-in (OAuth with the hub), as opening JupyterLab does
    assert session.get(f"{hub.url}/user/alice/lab", timeout=60).status_code == 200
    # the warning comes in the last half of the idle timeout, not before (the clock read
    # after each answer: an answer that took long may come from the warning's time)
    home_said = notice_form(session, hub)
    assert home_said is None or time.time() - idle_since >= IDLE_TIMEOUT / 2
    lab_said = lab_notice(session, hub)
    assert lab_said is None or time.time() - idle_since >= IDLE_TIMEOUT / 2
    fields = wait_until(lambda: notice_form(session, hub), IDLE_TIMEOUT, "the home page's notice")
    notice = lab_notice(session, hub)
    assert notice["kind"] == "idle" and notice["can_keep_running"]
    assert "unless you keep it running" in notice["short"] and len(notice["short"]) <= 140
    [mail] = wait_until(lambda: inbox.envelopes, 60, "the warning e-mail")
    assert mail.rcpt_tos == ["alice@example.org"]
    message = message_from_bytes(mail.content, policy=policy.default)
    assert message["Subject"].endswith("(idle)") and "Keep running" in message.get_content()
    pressed = session.post(f"{hub.url}/hub/keep-running", data=fields, timeout=30)
    assert pressed.status_code == 200 and pressed.url.endswith("/hub/home"), pressed.text[:300]
    granted = last_activity(hub)
    assert granted > idle_since
    [line] = keep_lines(hub)
    assert (line["user"], line["server"], line.get("outcome"), line["via"]) == (
        "alice",
        "",
        None,
        "home",
    )
    assert lab_notice(session, hub) is None  # kept: no notice until the next idle period

    # past the bound (54 s after the last use) the button is refused, with the reason; the
    # server still runs (it was kept until at least idle_since + 30 + 60)
    wait_until(lambda: time.time() > idle_since + LIMIT_HOURS * 3600 + 1, 120, "the bound")
    refused = session.post(f"{hub.url}/hub/keep-running", data=fields, timeout=30)
    assert refused.status_code == 409 and "can be kept running" in refused.text
    assert keep_lines(hub)[-1]["outcome"] == "refused"
    # JupyterLab's button: the notebook server asks the hub with its own token
    xsrf = session.cookies.get("_xsrf", path="/user/alice/")
    from_lab = session.post(
        f"{hub.url}/user/alice/snh/keep-running", headers={"X-XSRFToken": xsrf}, timeout=30
    )
    assert from_lab.status_code == 409 and "can be kept running" in from_lab.json()["message"]
    assert (keep_lines(hub)[-1]["outcome"], keep_lines(hub)[-1]["via"]) == (
        "refused",
        "jupyterlab",
    )
    warned = hub.audit_lines("stop_warning")
    assert warned and all(r["kind"] == "idle" and r["emailed"] for r in warned)
    # and the culler stops it as usual
    wait_until(
        lambda: not (server_model(hub, "alice") or {}).get("ready"),
        IDLE_TIMEOUT + 60,
        "the cull",
    )
