"""JupyterHub 6's conventions for the server API, held on JupyterHub 5.2 too (``make test``
runs this module on both): a refusal is told apart from an error; server names follow
JupyterHub 6's rule (``jupyterhub.slugs.is_valid_safe_slug``: 1-30 characters) with a display
name for people; ``user_options`` set without a start (``PUT``, ``PATCH``, new in 6.0) go
through the spawner's one validator; the named-server limit follows the communities'
``max_servers_per_user``; operators start servers with ``start:servers`` (``servers`` on 5.2).
"""

from __future__ import annotations

import re

import jupyterhub
import pytest
import requests

from .harness import SERVICE_TOKEN, own_hub, sign_in, token_for
from .spawn_harness import JUPYTER, front_control, spawn_error, start_server, stop_server

pytestmark = pytest.mark.integration

SIX = jupyterhub.version_info >= (6,)


@pytest.fixture(scope="module")
def hub(cloud, tmp_path_factory):
    with own_hub(cloud, tmp_path_factory.mktemp("hub-server-api"), "server-api") as hub:
        for name in ("alice", "bob"):
            sign_in(hub, name)
        yield hub


def servers_of(hub, user: str) -> dict:
    """Every server of ``user``, stopped ones included."""
    return hub.api("GET", f"/users/{user}", params={"include_stopped_servers": "1"}).json()[
        "servers"
    ]


def metrics_text(hub) -> str:
    answer = requests.get(
        f"{hub.url}/hub/metrics", headers={"Authorization": f"token {SERVICE_TOKEN}"}, timeout=30
    )
    answer.raise_for_status()
    return answer.text


def spawn_counts(hub) -> dict[tuple[str, str], float]:
    """JupyterHub 6's spawn metric by (status, reason)."""
    text = metrics_text(hub)
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = re.match(r"jupyterhub_server_spawn_duration_seconds_count\{(.*)\} (\S+)", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            counts[(labels.get("status", ""), labels.get("reason", ""))] = float(m.group(2))
    return counts


def test_a_refusal_is_told_apart_from_an_error(hub, cloud):
    """Bad options are refused (400, the validator's words; JupyterHub 6 counts a spawn
    ``failure`` labelled ``options`` and no consecutive failure); a fault of AWS is an error
    (500, saying an admin has the details; JupyterHub 6 counts an ``error``)."""
    before = spawn_counts(hub) if SIX else {}
    refused = hub.api("POST", "/users/alice/servers/refused", json={**JUPYTER, "disk_gb": 9999})
    assert refused.status_code == 400, refused.text
    assert "disk" in refused.json()["message"].lower()

    front_control(
        cloud,
        "POST",
        "/faults",
        {"service": "ec2", "action": "RunInstances", "code": "UnauthorizedOperation", "count": 1},
    )
    message = spawn_error(hub, "alice", JUPYTER, name="failing")
    assert "not allowed to start this server" in message and "admin" in message
    if SIX:
        after = spawn_counts(hub)
        grew = {key for key in after if after[key] > before.get(key, 0)}
        assert ("failure", "options") in grew, after
        assert any(status == "error" for status, _ in grew), after
    metrics = metrics_text(hub)
    assert re.search(r'snh_spawn_duration_seconds_count\{[^}]*outcome="refused"', metrics)
    assert re.search(r'snh_spawn_duration_seconds_count\{[^}]*outcome="failure"', metrics)


def test_server_names_at_and_over_the_limits(hub):
    """Over JupyterHub 6's limits (31 characters, a capital, a space, two hyphens) a new
    server is refused before anything is made; at the limit (30) it is accepted, with a
    display name for people."""
    for bad in ("a" * 31, "Analysis", "my server", "a--b", "2nd"):
        answer = hub.api("POST", f"/users/bob/servers/{bad}", json=JUPYTER)
        assert answer.status_code == 400, (bad, answer.text)
        assert bad not in servers_of(hub, "bob")
    name = "a" * 30
    if SIX:
        made = hub.api(
            "PUT", f"/users/bob/servers/{name}", json={"display_name": "My long analysis"}
        )
        assert made.status_code == 201, made.text
        assert servers_of(hub, "bob")[name]["display_name"] == "My long analysis"
        assert hub.api("DELETE", f"/users/bob/servers/{name}", json={"remove": True}).ok
    else:
        start_server(hub, "bob", JUPYTER, name=name)
        stop_server(hub, "bob", name)


@pytest.mark.skipif(not SIX, reason="PUT and PATCH of a server are JupyterHub 6's")
def test_user_options_set_without_a_start_are_validated(hub):
    """PUT and PATCH store ``user_options`` without a start; JupyterHub would take anything.
    The spawner's validator refuses a bad value with its own words and nothing is saved."""
    bad = hub.api("PUT", "/users/alice/servers/draft", json={"user_options": {"image": "nope"}})
    assert bad.status_code == 400 and "Unknown environment" in bad.json()["message"], bad.text
    assert "draft" not in servers_of(hub, "alice")
    made = hub.api("PUT", "/users/alice/servers/draft", json={"user_options": JUPYTER})
    assert made.status_code == 201, made.text
    for wrong in ({**JUPYTER, "instance_type": "x9.huge"}, {"community": "nf-osc"}, "text"):
        patched = hub.api("PATCH", "/users/alice/servers/draft", json={"user_options": wrong})
        assert patched.status_code == 400, (wrong, patched.text)
    assert servers_of(hub, "alice")["draft"]["user_options"] == JUPYTER  # unchanged
    good = {**JUPYTER, "instance_type": "t3.large"}
    patched = hub.api("PATCH", "/users/alice/servers/draft", json={"user_options": good})
    assert patched.status_code == 200 and patched.json()["user_options"] == good, patched.text
    assert hub.api("DELETE", "/users/alice/servers/draft", json={"remove": True}).ok


@pytest.mark.skipif(not SIX, reason="servers made without a start are JupyterHub 6's")
def test_the_named_server_limit_follows_the_communities(hub):
    """bob is in ad-portal (2 servers) and nf-osc (1): JupyterHub lets him make 3 named
    servers, not a fourth (the spawner's own check still counts per community at a start)."""
    as_bob = {"Authorization": f"token {token_for(hub, 'bob', None)}"}
    names = [f"limit-{i}" for i in range(4)]
    answers = [
        requests.put(f"{hub.url}/hub/api/users/bob/servers/{n}", headers=as_bob, timeout=30)
        for n in names
    ]
    assert [a.status_code for a in answers] == [201, 201, 201, 400], [a.text for a in answers]
    assert "maximum of 3 named servers" in answers[3].text
    for n in names[:3]:
        assert hub.api("DELETE", f"/users/bob/servers/{n}", json={"remove": True}).ok
