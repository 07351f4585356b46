"""Idle culling's configuration: communities file -> one culler service per community, each
with a role filtered to its community's group; the per-server rule for users in several
communities; the environment overrides; and what jupyterhub_config.py makes of it all."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from traitlets.config.loader import PyFileConfigLoader

from hub_config import CommunitiesError, load_communities, parse_communities
from hub_config.culling import (
    POLICY_VARIABLE,
    CullingOverrides,
    CullPolicy,
    CullRule,
    activity_interval,
    activity_proxy_class,
    arbiter,
    backstop_idle_seconds,
    cull_every_seconds,
    cull_rules,
    culler_class,
    culler_scopes,
    culler_services,
    server_community,
)
from hub_config.settings import SettingsError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "hub_config" / "communities.yaml"
NOW = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def demo():
    return load_communities(DEMO)


def _with(changes: dict[str, Any]):
    data = yaml.safe_load(DEMO.read_text())
    for path, value in changes.items():
        *parents, key = path.split(".")
        node = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[key] = value
    return parse_communities(yaml.safe_dump(data), source="test.yaml")


def _server(community: str | None = None, *, started_ago: float = 60, **extra: Any) -> dict:
    options = {"community": community} if community else {}
    started = (NOW - timedelta(seconds=started_ago)).isoformat().replace("+00:00", "Z")
    return {"name": "", "full_name": "bob/", "user_options": options, "started": started, **extra}


# --------------------------------------------------------------------------------------------
# The communities file
# --------------------------------------------------------------------------------------------


def test_rules_of_the_demo_file(demo) -> None:
    assert cull_rules(demo) == (
        CullRule("ad-portal", 3600, 0),
        CullRule("nf-osc", 7200, 0),
    )


def test_max_age_hours_defaults_and_per_community() -> None:
    config = _with({"defaults.max_age_hours": 72, "communities.1.max_age_hours": 8})
    assert [c.max_age_hours for c in config.communities] == [72, 8]
    assert [r.max_age_seconds for r in cull_rules(config)] == [72 * 3600, 8 * 3600]
    assert load_communities(DEMO).communities[0].max_age_hours is None


@pytest.mark.parametrize("value", [0, -3, "12", 1.5, 9000, True])
def test_max_age_hours_must_be_a_positive_whole_number(value: Any) -> None:
    with pytest.raises(CommunitiesError) as info:
        _with({"communities.0.max_age_hours": value})
    assert info.value.community == "ad-portal" and info.value.key == "max_age_hours"


def test_max_age_hours_is_described_in_the_schema() -> None:
    schema = json.loads((REPO / "hub_config" / "communities.schema.json").read_text())
    described = schema["$defs"]["max_age_hours"]
    assert described["type"] == "integer" and described["minimum"] == 1
    assert "even if it is in use" in described["description"]
    assert "$ref" in schema["$defs"]["defaults"]["properties"]["max_age_hours"]
    assert "$ref" in schema["$defs"]["community"]["properties"]["max_age_hours"]
    assert "max_age_hours" in DEMO.read_text()


# --------------------------------------------------------------------------------------------
# The environment overrides
# --------------------------------------------------------------------------------------------


def test_overrides_from_the_environment(demo) -> None:
    assert CullingOverrides.from_environ({}) == CullingOverrides(None, None)
    overrides = CullingOverrides.from_environ(
        {"IDLE_TIMEOUT_SECONDS": " 20 ", "CULL_EVERY_SECONDS": "2"}
    )
    assert overrides == CullingOverrides(20, 2)
    assert {r.timeout_seconds for r in cull_rules(demo, overrides)} == {20}
    assert cull_every_seconds(cull_rules(demo, overrides), overrides) == 2


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "ten", "1e3", "\uff11\uff12", "9" * 10])
def test_a_malformed_override_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        CullingOverrides.from_environ({"CULL_EVERY_SECONDS": value})
    assert info.value.problems == [
        f"CULL_EVERY_SECONDS={value!r}: not a positive whole number of seconds"
    ]
    with pytest.raises(SettingsError) as both:
        CullingOverrides.from_environ({"IDLE_TIMEOUT_SECONDS": value, "CULL_EVERY_SECONDS": "x"})
    assert [p.split("=")[0] for p in both.value.problems] == [
        "IDLE_TIMEOUT_SECONDS",
        "CULL_EVERY_SECONDS",
    ]
    assert "fix these environment variables" in str(both.value)


def test_intervals_follow_the_shortest_timeout(demo) -> None:
    rules = cull_rules(demo)
    assert cull_every_seconds(rules, CullingOverrides()) == 300
    assert activity_interval(rules) == 300  # jupyterhub-singleuser's default, no more
    short = cull_rules(demo, CullingOverrides(idle_timeout_seconds=20))
    assert cull_every_seconds(short, CullingOverrides(idle_timeout_seconds=20)) == 10
    assert activity_interval(short) == 5
    assert activity_interval([CullRule("x", 2)]) == 1
    assert backstop_idle_seconds(3600) == 7200
    assert backstop_idle_seconds(20) == 3600  # never less than an hour


# --------------------------------------------------------------------------------------------
# Services and roles
# --------------------------------------------------------------------------------------------


def test_one_culler_per_community_with_only_its_groups_scopes(demo) -> None:
    services, roles = culler_services(demo, python="/opt/python")
    assert [s["name"] for s in services] == ["idle-culler-ad-portal", "idle-culler-nf-osc"]
    ad, nf = services
    assert ad["command"] == [
        "/opt/python",
        "-m",
        "hub_config.culling",
        "--timeout=3600",
        "--cull-every=300",
    ]
    assert nf["command"][3] == "--timeout=7200"
    for service in services:
        assert not any("cull-users" in a or "remove-named" in a for a in service["command"])
        assert "url" not in service and "api_token" not in service  # no web endpoint, no token
    assert roles == [
        {
            "name": "idle-culler-ad-portal-role",
            "description": "Stop idle servers of community ad-portal (never delete)",
            "scopes": [
                "list:users!group=ad-portal",
                "read:users:activity!group=ad-portal",
                "read:servers!group=ad-portal",
                "delete:servers!group=ad-portal",
            ],
            "services": ["idle-culler-ad-portal"],
        },
        {
            "name": "idle-culler-nf-osc-role",
            "description": "Stop idle servers of community nf-osc (never delete)",
            "scopes": culler_scopes("nf-osc"),
            "services": ["idle-culler-nf-osc"],
        },
    ]
    # Every culler knows every community's rule (for users in several communities).
    policy = CullPolicy.from_json(nf["environment"][POLICY_VARIABLE])
    assert policy.community == "nf-osc" and set(policy.rules) == {"ad-portal", "nf-osc"}
    assert policy.rules["ad-portal"].timeout_seconds == 3600


def test_role_names_are_valid_for_any_community_id() -> None:
    from jupyterhub.roles import _role_name_pattern

    config = _with({"communities.0.id": "0-trailing-", "communities.1.id": "x"})
    _services, roles = culler_services(config)
    assert all(_role_name_pattern.match(r["name"]) for r in roles)


# --------------------------------------------------------------------------------------------
# The per-server rule
# --------------------------------------------------------------------------------------------


def _policies(demo) -> dict[str, CullPolicy]:
    services, _roles = culler_services(demo)
    return {
        (p := CullPolicy.from_json(s["environment"][POLICY_VARIABLE])).community: p
        for s in services
    }


def test_each_server_is_culled_by_its_own_communitys_timeout(demo) -> None:
    cullers = _policies(demo)
    nf_server = _server("nf-osc")  # bob's, visible to both of bob's communities' cullers
    for culler in cullers.values():
        assert culler.cull_reason(nf_server, timedelta(minutes=90), NOW) is None
        reason = culler.cull_reason(nf_server, timedelta(minutes=121), NOW)
        assert reason == "idle for 2:01:00, community nf-osc allows 7200 s"
    ad_server = _server("ad-portal")
    assert all(c.cull_reason(ad_server, timedelta(minutes=61), NOW) for c in cullers.values())
    assert not any(c.cull_reason(ad_server, timedelta(minutes=59), NOW) for c in cullers.values())


def test_a_server_of_unknown_community_gets_the_shortest_timeout(demo) -> None:
    cullers = _policies(demo)
    for server in (_server(None), _server("gone-community"), {"user_options": None}):
        assert server_community(server) in (None, "gone-community")
        idle = timedelta(minutes=61)
        assert cullers["ad-portal"].cull_reason(server, idle, NOW) is not None
        assert cullers["nf-osc"].cull_reason(server, idle, NOW) is None
        # ... the user's other culler stops it at its own, longer, timeout.
        assert cullers["nf-osc"].cull_reason(server, timedelta(minutes=120), NOW) is not None


def test_max_age_stops_a_busy_server() -> None:
    config = _with({"communities.1.max_age_hours": 8})
    services, _ = culler_services(config)
    ad = CullPolicy.from_json(services[0]["environment"][POLICY_VARIABLE])
    busy = timedelta(seconds=5)
    assert ad.cull_reason(_server("nf-osc", started_ago=7 * 3600), busy, NOW) is None
    reason = ad.cull_reason(_server("nf-osc", started_ago=8 * 3600 + 1), busy, NOW)
    assert reason == "running for 8:00:01, community nf-osc allows at most 8 h"
    # ad-portal has no maximum age
    assert ad.cull_reason(_server("ad-portal", started_ago=1000 * 3600), busy, NOW) is None


def test_the_arbiter_is_what_the_culler_calls(demo) -> None:
    decide = arbiter(_policies(demo)["ad-portal"])
    server = _server("nf-osc", last_activity="2026-01-02T11:00:00Z")
    assert decide(inactive=timedelta(hours=3), inactive_limit=3600, server=server) is True
    assert decide(inactive=timedelta(hours=1.5), inactive_limit=3600, server=server) is False


def test_the_culler_application(monkeypatch: pytest.MonkeyPatch, demo) -> None:
    services, _ = culler_services(demo)
    monkeypatch.setenv(POLICY_VARIABLE, services[1]["environment"][POLICY_VARIABLE])
    app = culler_class()()
    app.parse_command_line(services[1]["command"][3:])
    assert (app.timeout, app.cull_every, app.max_age) == (7200, 300, 0)
    assert app.config_file == ""  # never idle_culler_config.py from the working directory
    assert not app.cull_users and not app.remove_named_servers
    hook = app.cull_arbiter_hook
    assert hook(inactive=timedelta(hours=1.5), inactive_limit=7200, server=_server("ad-portal"))
    for flag in ("--cull-users=True", "--remove-named-servers=True"):
        with pytest.raises(ValueError, match="culling only stops servers"):
            culler_class()().parse_command_line([flag])


def test_the_culler_command_runs(tmp_path: Path) -> None:
    import subprocess

    answer = subprocess.run(
        [sys.executable, "-m", "hub_config.culling", "--help-all"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert answer.returncode == 0, answer.stderr
    assert "--cull-every" in answer.stdout and "CommunityIdleCuller" in answer.stdout


# --------------------------------------------------------------------------------------------
# Activity: the proxy's per-route activity is not server activity
# --------------------------------------------------------------------------------------------


def test_the_proxy_does_not_report_route_activity(monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyterhub.proxy import ConfigurableHTTPProxy

    routes = {
        "/user/bob/": {
            "routespec": "/user/bob/",
            "target": "http://127.0.0.1:40001",
            "data": {"user": "bob", "server_name": "", "last_activity": "2026-01-02T12:00:00Z"},
        },
        "/": {"routespec": "/", "target": "http://127.0.0.1:8081", "data": {"hub": True}},
    }

    async def get_all_routes(self: Any) -> dict[str, Any]:
        return json.loads(json.dumps(routes))

    monkeypatch.setattr(ConfigurableHTTPProxy, "get_all_routes", get_all_routes)
    proxy_class = activity_proxy_class()
    assert issubclass(proxy_class, ConfigurableHTTPProxy)
    answer = asyncio.run(proxy_class().get_all_routes())
    assert answer["/user/bob/"]["data"] == {"user": "bob", "server_name": ""}
    assert answer["/user/bob/"]["target"] == "http://127.0.0.1:40001"
    assert answer["/"] == routes["/"]


# --------------------------------------------------------------------------------------------
# jupyterhub_config.py
# --------------------------------------------------------------------------------------------


def _hub_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> Any:
    required = {
        "SYNAPSE_CLIENT_ID": "client",
        "SYNAPSE_CLIENT_SECRET": "secret",
        "SNH_PUBLIC_URL": "https://notebooks.example.org",
        "JUPYTERHUB_CRYPT_KEY": "0" * 64,
        "SNH_STATE_DIR": str(tmp_path),
        "SNH_COMMUNITIES_FILE": str(DEMO),
    }
    for name in ("IDLE_TIMEOUT_SECONDS", "CULL_EVERY_SECONDS", "SNH_EXTRA_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**required, **env}.items():
        monkeypatch.setenv(name, value)
    return PyFileConfigLoader("jupyterhub_config.py", path=str(REPO)).load_config()


def _value(value: Any, initial: Any) -> Any:
    """A config value, applied to the trait's initial value when it is a lazy update."""
    return value.get_value(initial) if hasattr(value, "get_value") else value


def test_jupyterhub_config_runs_the_cullers(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    config = _hub_config(monkeypatch, tmp_path)
    services = {s["name"]: s for s in _value(config.JupyterHub.services, [])}
    assert {"idle-culler-ad-portal", "idle-culler-nf-osc"} <= set(services)
    assert services["idle-culler-ad-portal"]["command"][1:] == [
        "-m",
        "hub_config.culling",
        "--timeout=3600",
        "--cull-every=300",
    ]
    roles = {r["name"]: r for r in _value(config.JupyterHub.load_roles, [])}
    assert roles["idle-culler-nf-osc-role"]["scopes"] == culler_scopes("nf-osc")
    assert config.JupyterHub.proxy_class is activity_proxy_class()
    environment = _value(config.Spawner.environment, {})
    assert environment["JUPYTERHUB_ACTIVITY_INTERVAL"] == "300"

    quick = _hub_config(monkeypatch, tmp_path, IDLE_TIMEOUT_SECONDS="20", CULL_EVERY_SECONDS="2")
    services = _value(quick.JupyterHub.services, [])
    commands = [s["command"] for s in services if "culler" in s["name"]]
    assert all(c[3:] == ["--timeout=20", "--cull-every=2"] for c in commands)


def test_jupyterhub_config_refuses_a_malformed_override(monkeypatch, tmp_path) -> None:
    with pytest.raises(SystemExit) as info:
        _hub_config(monkeypatch, tmp_path, IDLE_TIMEOUT_SECONDS="an hour")
    assert "IDLE_TIMEOUT_SECONDS='an hour': not a positive whole number of seconds" in str(
        info.value
    )
