"""Idle culling: which idle servers the hub stops, when, and what counts as activity.

Culling only ever *stops* a server: its instance is stopped and its home volume kept, and the
next start resumes the same instance. Users are never deleted (``--cull-users`` is refused)
and named servers never removed (``--remove-named-servers`` is refused).

**One culler per community.** ``jupyterhub-idle-culler`` runs as a hub-managed service, one per
community (``idle-culler-<community id>``), each holding only the scopes it needs, filtered to
its community's JupyterHub group (the authenticator puts every member of a community's team in
a group named by the community id): ``list:users``, ``read:users:activity``, ``read:servers``
and ``delete:servers``, each ``!group=<community id>``. A culler can neither see nor stop the
servers of users outside its community.

**Users in several communities.** Their servers are visible to the culler of each of their
communities, and each culler applies *the server's own community's* rule (timeout, maximum
age), not its own: the community is in the server's ``user_options`` (``community``), and
every culler knows every community's rule. So a server started in a community with a two-hour
timeout is stopped after two idle hours, whichever of its user's cullers gets there first.
When a server's community is not known (``user_options`` without ``community``: a REST start
that took the default), each culler that sees it applies its own rule, so the shortest timeout
of the user's communities applies: never longer than any of them. A user who has left every
community is in no culler's group; the instance's own backstop (``spawner/bootstrap``) stops
their idle server.

**Activity** is what the notebook server itself reports to the hub (``jupyterhub-singleuser``
sends its ``last_activity`` to the hub's activity API): authenticated API requests, kernel and
terminal activity, and what jupyter-server-proxy serves (RStudio), minus RStudio's event
long-poll (``images/rstudio/rstudio_activity_filter.py``). Two other sources are not activity:

- the proxy's per-route activity, which JupyterHub adds every ``last_activity_interval``:
  configurable-http-proxy counts every proxied byte, including websocket pings of an open but
  unused JupyterLab tab and RStudio's never-ending long-poll. ``activity_proxy_class()`` is
  configurable-http-proxy without it (routes and their checks unchanged);
- the hub's own traffic: the spawner reaches the notebook directly through its tunnel's port,
  not through the proxy, unauthenticated (jupyter-server records only authenticated requests),
  and the tunnel's keep-alives are below HTTP.

The notebook reports every ``JUPYTERHUB_ACTIVITY_INTERVAL`` seconds (``activity_interval``: a
quarter of the shortest timeout, at most 5 minutes), so a server in use never looks idle.

**Trying it quickly**: ``IDLE_TIMEOUT_SECONDS`` replaces every community's timeout,
``CULL_EVERY_SECONDS`` the interval between the cullers' checks (default: 5 minutes, or half
the shortest timeout when that is less).

``python -m hub_config.culling`` is the culler each service runs: ``jupyterhub-idle-culler``
with the per-server rule above as its ``cull_arbiter_hook`` (the rules in ``SNH_CULL_POLICY``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from .communities import CommunitiesConfig, Community
from .settings import (
    POLICY_VARIABLE,
    CullingOverrides,
    culler_policy_json,
)

DEFAULT_CULL_EVERY_SECONDS = 300
#: jupyterhub-singleuser's default report interval, the longest we use.
MAX_ACTIVITY_INTERVAL_SECONDS = 300
#: The instance backstop's limit is twice the idle timeout, but never less than this.
MIN_BACKSTOP_SECONDS = 3600


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CullRule:
    """When a community's servers are stopped."""

    community: str
    timeout_seconds: int
    #: 0: no maximum age.
    max_age_seconds: int = 0


def cull_rules(
    communities: CommunitiesConfig | Iterable[Community],
    overrides: CullingOverrides | None = None,
) -> tuple[CullRule, ...]:
    """Every community's rule, in file order."""
    overrides = overrides or CullingOverrides()
    items = communities.communities if isinstance(communities, CommunitiesConfig) else communities
    return tuple(
        CullRule(
            community=c.id,
            timeout_seconds=overrides.idle_timeout_seconds or c.idle_timeout_minutes * 60,
            max_age_seconds=(c.max_age_hours or 0) * 3600,
        )
        for c in items
    )


def cull_every_seconds(rules: Sequence[CullRule], overrides: CullingOverrides) -> int:
    """Seconds between checks: the override, else 5 minutes or half the shortest timeout."""
    if overrides.cull_every_seconds:
        return overrides.cull_every_seconds
    shortest = min((r.timeout_seconds for r in rules), default=2 * DEFAULT_CULL_EVERY_SECONDS)
    return max(1, min(DEFAULT_CULL_EVERY_SECONDS, shortest // 2))


def activity_interval(rules: Sequence[CullRule]) -> int:
    """``JUPYTERHUB_ACTIVITY_INTERVAL`` for the notebooks: a quarter of the shortest timeout
    (a server in use is never seen idle for long), at most jupyterhub-singleuser's 5 minutes."""
    shortest = min((r.timeout_seconds for r in rules), default=4 * MAX_ACTIVITY_INTERVAL_SECONDS)
    return max(1, min(MAX_ACTIVITY_INTERVAL_SECONDS, shortest // 4))


def backstop_idle_seconds(timeout_seconds: int) -> int:
    """The instance backstop's limit for a server culled after ``timeout_seconds``: twice that,
    at least an hour (for ``BootstrapConfig.backstop_idle_seconds``)."""
    return max(MIN_BACKSTOP_SECONDS, 2 * timeout_seconds)


# --------------------------------------------------------------------------------------------
# The services and their roles
# --------------------------------------------------------------------------------------------


def service_name(community_id: str) -> str:
    return f"idle-culler-{community_id}"


def culler_scopes(community_id: str) -> list[str]:
    """Exactly what jupyterhub-idle-culler needs to stop servers (its README), for the members
    of one community's group: list them, read their activity and servers, stop servers."""
    return [
        f"{scope}!group={community_id}"
        for scope in ("list:users", "read:users:activity", "read:servers", "delete:servers")
    ]


@dataclass(frozen=True)
class CullPolicy:
    """What one culler service knows: its community, and every community's rule."""

    community: str
    rules: Mapping[str, CullRule]

    def to_json(self) -> str:
        return json.dumps(
            {
                "community": self.community,
                "rules": {
                    r.community: {"timeout": r.timeout_seconds, "max_age": r.max_age_seconds}
                    for r in self.rules.values()
                },
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> CullPolicy:
        data = json.loads(text)
        rules = {
            name: CullRule(name, int(rule["timeout"]), int(rule.get("max_age", 0)))
            for name, rule in data["rules"].items()
        }
        if data["community"] not in rules:
            raise ValueError(f"{POLICY_VARIABLE}: no rule for {data['community']!r}")
        return cls(data["community"], rules)

    @property
    def own(self) -> CullRule:
        return self.rules[self.community]

    def rule_for(self, server: Mapping[str, Any]) -> CullRule:
        """The server's community's rule; this culler's own when that is not known."""
        return self.rules.get(server_community(server) or "", self.own)

    def cull_reason(
        self, server: Mapping[str, Any], inactive: timedelta, now: datetime
    ) -> str | None:
        """Why the server must stop now, or None."""
        rule = self.rule_for(server)
        whose = f"community {rule.community}"
        if inactive.total_seconds() >= rule.timeout_seconds:
            return f"idle for {_duration(inactive)}, {whose} allows {rule.timeout_seconds} s"
        started = _parse_time(server.get("started"))
        if rule.max_age_seconds and started is not None:
            age = now - started
            if age.total_seconds() >= rule.max_age_seconds:
                return (
                    f"running for {_duration(age)}, {whose} allows at most "
                    f"{rule.max_age_seconds // 3600} h"
                )
        return None


def server_community(server: Mapping[str, Any]) -> str | None:
    """The community a server was started in, from its ``user_options``."""
    options = server.get("user_options")
    value = options.get("community") if isinstance(options, Mapping) else None
    return value if isinstance(value, str) and value else None


def culler_services(
    communities: CommunitiesConfig | Iterable[Community],
    overrides: CullingOverrides | None = None,
    *,
    python: str = sys.executable,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(services, roles)`` for ``c.JupyterHub.services`` and ``c.JupyterHub.load_roles``:
    one culler per community, each with a role of its community's group-filtered scopes."""
    overrides = overrides or CullingOverrides()
    rules = cull_rules(communities, overrides)
    every = cull_every_seconds(rules, overrides)
    by_community = {r.community: r for r in rules}
    services: list[dict[str, Any]] = []
    roles: list[dict[str, Any]] = []
    for rule in rules:
        name = service_name(rule.community)
        policy = CullPolicy(rule.community, by_community)
        services.append(
            {
                "name": name,
                "display": False,
                "command": [
                    python,
                    "-m",
                    "hub_config.culling",
                    f"--timeout={rule.timeout_seconds}",
                    f"--cull-every={every}",
                ],
                "environment": {POLICY_VARIABLE: policy.to_json()},
            }
        )
        roles.append(
            {
                "name": f"{name}-role",
                "description": f"Stop idle servers of community {rule.community} (never delete)",
                "scopes": culler_scopes(rule.community),
                "services": [name],
            }
        )
    return services, roles


# --------------------------------------------------------------------------------------------
# The proxy without per-route activity
# --------------------------------------------------------------------------------------------


@cache
def activity_proxy_class() -> type:
    """configurable-http-proxy, except that its routes' ``last_activity`` is not reported to
    the hub (JupyterHub then skips the route in ``update_last_activity``): server activity
    comes from the notebook servers only. Routes, and the hub's periodic check of them, work
    as before. (A function, so that the culler services need not import JupyterHub.)"""
    from jupyterhub.proxy import ConfigurableHTTPProxy

    class NotebookActivityOnlyProxy(ConfigurableHTTPProxy):
        __doc__ = activity_proxy_class.__doc__

        async def get_all_routes(self) -> dict[str, Any]:
            routes = await super().get_all_routes()
            for route in routes.values():
                data = route.get("data")
                if isinstance(data, dict) and "user" in data:
                    data.pop("last_activity", None)
            return routes

    NotebookActivityOnlyProxy.__module__ = __name__
    NotebookActivityOnlyProxy.__qualname__ = NotebookActivityOnlyProxy.__name__
    return NotebookActivityOnlyProxy


# --------------------------------------------------------------------------------------------
# The culler service: python -m hub_config.culling --timeout=N --cull-every=N
# --------------------------------------------------------------------------------------------


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # the hub's are UTC


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def arbiter(policy: CullPolicy, log: logging.Logger | None = None) -> Any:
    """A ``cull_arbiter_hook`` for jupyterhub-idle-culler applying ``policy``."""

    def cull_arbiter(*, inactive: timedelta, inactive_limit: int, server: Any, **_: Any) -> bool:
        reason = policy.cull_reason(server, inactive, datetime.now(UTC))
        if reason and log is not None:
            log.info("Stopping server %s: %s", server.get("full_name", server.get("name")), reason)
        return reason is not None

    return cull_arbiter


@cache
def culler_class() -> type:
    """jupyterhub-idle-culler's application, made to stop only, by the server's community.

    The rules come from ``SNH_CULL_POLICY`` (set by ``culler_services``); without it, the
    culler's own rule (``--timeout`` for every server it sees). No config file is read (the
    culler would load ``idle_culler_config.py`` from the hub's working directory), and
    ``--cull-users`` and ``--remove-named-servers`` are refused.
    """
    from jupyterhub_idle_culler import IdleCuller, default_cull_arbiter
    from traitlets import default, validate

    class CommunityIdleCuller(IdleCuller):  # type: ignore[misc]
        @default("config_file")
        def _no_config_file(self) -> str:
            return ""

        @default("cull_arbiter_hook")
        def _policy_arbiter(self) -> Any:
            text = culler_policy_json()
            if not text:
                return default_cull_arbiter
            return arbiter(CullPolicy.from_json(text), self.log)

        @validate("cull_users", "remove_named_servers")
        def _stop_only(self, proposal: Any) -> bool:
            if proposal.value:
                raise ValueError(
                    f"--{proposal.trait.name.replace('_', '-')}: culling only stops servers"
                )
            return False

    CommunityIdleCuller.__doc__ = culler_class.__doc__
    CommunityIdleCuller.__module__ = __name__
    CommunityIdleCuller.__qualname__ = CommunityIdleCuller.__name__
    return CommunityIdleCuller


def main(argv: Sequence[str] | None = None) -> None:
    """Run one community's culler (the service's command)."""
    culler_class().launch_instance(list(argv) if argv is not None else None)


if __name__ == "__main__":
    main()
