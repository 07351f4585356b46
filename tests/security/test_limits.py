"""Trust suite: a community's server limit holds against requests racing it (finding 7).

``max_servers_per_user`` bounds what one person can run (and spend) in a community. The limit
was checked against EC2 alone, where servers still starting have no instance yet: REST starts
sent in parallel all passed the check.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.harness import own_hub, sign_in
from tests.integration.spawn_harness import last_progress, server_model, stop_server

pytestmark = pytest.mark.integration

NF = {"community": "nf-osc"}  # max_servers_per_user: 1 in the demo communities file


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    with own_hub(cloud, tmp_path_factory.mktemp("hub-limits"), "trust-limits") as hub:
        yield hub


def test_parallel_rest_starts_cannot_exceed_the_server_limit(hub):
    sign_in(hub, "bob")  # bob is in nf-osc, whose members may run one server
    names = ["race-a", "race-b", "race-c", "race-d"]
    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(
            pool.map(lambda n: hub.api("POST", f"/users/bob/servers/{n}", json=NF), names)
        )
    assert all(a.status_code in (201, 202, 403) for a in answers), [a.text for a in answers]
    deadline = time.monotonic() + 180
    while any((server_model(hub, "bob", n) or {}).get("pending") for n in names):
        assert time.monotonic() < deadline, "starts did not settle"
        time.sleep(0.5)
    ready = [n for n in names if (server_model(hub, "bob", n) or {}).get("ready")]
    try:
        assert len(ready) == 1, ready
        for name, answer in zip(names, answers, strict=True):
            if name in ready:
                continue
            message = answer.json().get("message", "") if answer.status_code >= 400 else ""
            message = message or last_progress(hub, "bob", name)
            assert "the most this community allows" in message, (name, message)
    finally:
        for name in ready:
            stop_server(hub, "bob", name)
    # the refused starts hold no place: once the server is stopped, another may start
    answer = hub.api("POST", "/users/bob/servers/race-e", json=NF)
    assert answer.status_code in (201, 202), answer.text
    deadline = time.monotonic() + 180
    while (server_model(hub, "bob", "race-e") or {}).get("pending"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert (server_model(hub, "bob", "race-e") or {}).get("ready"), last_progress(
        hub, "bob", "race-e"
    )
    stop_server(hub, "bob", "race-e")
