"""The warning before a cull and **Keep running** (`operations.keep_running`), with a real
hub, its idle culler and a simulated server: idle timeout 60 s (the warning then comes in
the last 30 s, half the timeout), ``keep_running_hours`` 0.02 (72 s after the last use).
The home page warns; the button keeps the server past its first cull time and is audited;
once the bound is passed, it is refused with the reason (audited too) and the culler stops
the server as usual."""

from __future__ import annotations

import json
import time
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
LIMIT_HOURS = 0.02  # 72 s


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
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
    path = hub.log_path.parent / "audit.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r["action"] == "keep_running"]


def test_the_warning_and_keep_running_within_its_bound(hub):
    session, _ = sign_in(hub, "alice")
    start_server(hub, "alice", {"community": "ad-portal", "image": "jupyter"})
    idle_since = last_activity(hub)
    # the warning comes in the last half of the idle timeout, not before
    assert notice_form(session, hub) is None or time.time() - idle_since >= IDLE_TIMEOUT / 2
    fields = wait_until(lambda: notice_form(session, hub), IDLE_TIMEOUT, "the home page's notice")
    pressed = session.post(f"{hub.url}/hub/keep-running", data=fields, timeout=30)
    assert pressed.status_code == 200 and pressed.url.endswith("/hub/home"), pressed.text[:300]
    granted = last_activity(hub)
    assert granted > idle_since
    [line] = keep_lines(hub)
    assert (line["user"], line["server"], line.get("outcome")) == ("alice", "", None)

    # past the bound (72 s after the last use) the button is refused, with the reason; the
    # server still runs (it was kept until at least idle_since + 30 + 60)
    wait_until(lambda: time.time() > idle_since + LIMIT_HOURS * 3600 + 1, 120, "the bound")
    refused = session.post(f"{hub.url}/hub/keep-running", data=fields, timeout=30)
    assert refused.status_code == 409 and "can be kept running" in refused.text
    assert keep_lines(hub)[-1]["outcome"] == "refused"
    # and the culler stops it as usual
    wait_until(
        lambda: not (server_model(hub, "alice") or {}).get("ready"),
        IDLE_TIMEOUT + 60,
        "the cull",
    )
