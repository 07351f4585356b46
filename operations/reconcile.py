"""Reconciliation: no instance of this hub runs without a server the hub shows as running.

A hub killed in the middle of a spawn, an admin who started an instance by hand, a stop that
failed: each can leave an instance running (and costing) that no user sees. At hub start-up,
and then periodically, this compares the instances tagged with the hub's id against the
hub's servers (REST API, with ``admin:server_state``):

- a running instance whose server the hub shows running (or starting) is **adopted**: it is
  the server's (its id is in the server's state, or its tags name the server and the spawner
  finds it by them at the next start);
- a running instance whose server is stopped, or whose user or server the hub does not know,
  is **stopped** — never terminated: its disk may hold the only copy of someone's work;
- a server JupyterHub is still checking (``pending: "check"``) or renaming is **waited**
  for: a restarted hub with many servers lets its services start after
  ``init_spawners_timeout`` (10 s) while it goes on checking the rest in the background,
  and shows each of those not ready meanwhile. Taken for stopped, a thousand-server hub's
  restart stopped hundreds of running servers (``benchmarks/scale.py --servers 1000``).

Every decision is logged (the ``snh.audit`` logger, in the hub's log: the service does not
write the hub's audit file). Pure decision (`decide`) and I/O apart.

    snh reconcile [--once] [--every 600] [--dry-run]

runs as a hub-managed service (``JUPYTERHUB_API_URL``/``JUPYTERHUB_API_TOKEN`` from the hub).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from hub_config import load_communities
from hub_config.settings import OperatorSettings
from spawner.aws import Aws, AwsError
from spawner.naming import DEFAULT_SERVER_TAG, TAG_SERVER, TAG_USER
from spawner.poller import InstancePoller, InstanceView

from . import audit as audit_log

log = logging.getLogger("snh.reconcile")

#: An instance launched this recently may belong to a spawn the hub has not recorded yet.
GRACE = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class HubServer:
    user: str
    server: str  # "" for the default server
    running: bool  # ready or pending (starting/stopping)
    instance_id: str | None
    #: JupyterHub has not decided yet (its start-up check of the server, or a rename)
    undecided: bool = False


@dataclass(frozen=True)
class Decision:
    instance_id: str
    action: str  # "adopt" | "stop" | "wait"
    user: str
    server: str
    reason: str


def hub_servers(users: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], HubServer]:
    """The hub's servers from ``GET /hub/api/users?include_stopped_servers``."""
    found: dict[tuple[str, str], HubServer] = {}
    for user in users:
        for name, server in (user.get("servers") or {}).items():
            state = server.get("state") or {}
            pending = server.get("pending")
            running = bool(server.get("ready") or pending in ("spawn", "stop"))
            found[(user["name"], name)] = HubServer(
                user["name"],
                name,
                running,
                state.get("instance_id"),
                undecided=pending in ("check", "rename"),
            )
    return found


def decide(
    views: Iterable[InstanceView],
    servers: Mapping[tuple[str, str], HubServer],
    now: dt.datetime,
) -> list[Decision]:
    decisions = []
    for view in views:
        if view.state not in ("pending", "running"):
            continue
        user = view.tags.get(TAG_USER, "")
        tag = view.tags.get(TAG_SERVER, DEFAULT_SERVER_TAG)
        name = "" if tag == DEFAULT_SERVER_TAG else tag
        server = servers.get((user, name))
        young = view.launch_time is not None and now - view.launch_time < GRACE

        if server is None:
            action, reason = "stop", "no such server in the hub"
        elif server.undecided:
            action, reason = "wait", "the hub is still checking this server (a restart)"
        elif not server.running:
            if young and server.instance_id in (None, view.instance_id):
                action, reason = "wait", "launched moments ago; a spawn may be recording it"
            else:
                action, reason = "stop", "the hub shows this server stopped"
        elif server.instance_id not in (None, view.instance_id):
            action = "stop"
            reason = f"the server runs on {server.instance_id}, not on this instance"
        else:
            action, reason = "adopt", "the hub shows this server running"
        decisions.append(Decision(view.instance_id, action, user, name, reason))
    return decisions


async def fetch_users(api_url: str, token: str) -> list[dict[str, Any]]:
    client = AsyncHTTPClient()
    users: list[dict[str, Any]] = []
    offset = 0
    while True:
        request = HTTPRequest(
            f"{api_url.rstrip('/')}/users?include_stopped_servers=1&offset={offset}&limit=200",
            headers={
                "Authorization": f"token {token}",
                "Accept": "application/jupyterhub-pagination+json",
            },
        )
        answer = json.loads((await client.fetch(request)).body)
        items = answer["items"] if isinstance(answer, dict) else answer
        users.extend(items)
        next_page = answer.get("_pagination", {}).get("next") if isinstance(answer, dict) else None
        if not next_page:
            return users
        offset = next_page["offset"]


async def reconcile_once(
    poller: InstancePoller,
    api_url: str,
    token: str,
    *,
    dry_run: bool = False,
    audit: Any = None,
) -> list[Decision]:
    await poller.refresh()
    servers = hub_servers(await fetch_users(api_url, token))
    decisions = decide(poller.instances.values(), servers, dt.datetime.now(dt.UTC))
    for d in decisions:
        log.info(
            "%s %s (user %r, server %r): %s%s",
            d.action,
            d.instance_id,
            d.user,
            d.server,
            d.reason,
            " [dry run]" if dry_run else "",
        )
        if d.action == "stop" and not dry_run:
            try:
                await poller.aws.call("ec2", "stop_instances", InstanceIds=[d.instance_id])
            except AwsError as e:
                log.error("could not stop %s: %s", d.instance_id, e)
                continue
        if audit is not None and d.action != "wait" and not dry_run:
            audit(
                actor="reconciliation",
                action=d.action,
                instance_id=d.instance_id,
                user=d.user,
                server=d.server,
                reason=d.reason,
            )
    return decisions


def _audit_line(actor: str, action: str, **fields: Any) -> None:
    """A decision as an audit line of this process (the ``snh.audit`` logger: the service's
    output, in the hub's log)."""
    audit_log.record(action, actor, **fields)


async def _main(args: argparse.Namespace, settings: OperatorSettings) -> int:
    if not settings.api_url or not settings.api_token:
        log.error("JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN are needed (a hub service has them)")
        return 2
    api_url, token = settings.api_url, settings.api_token
    regions = sorted({c.region for c in load_communities(args.communities).communities})
    endpoint = settings.aws_endpoint_url
    pollers = [InstancePoller(Aws(region, endpoint), args.hub_id) for region in regions]
    audit = _audit_line
    while True:
        for poller in pollers:
            try:
                await reconcile_once(poller, api_url, token, dry_run=args.dry_run, audit=audit)
            except Exception:
                log.exception(
                    "reconciliation in %s failed; next try in %ss", poller.aws.region, args.every
                )
        if args.once:
            return 0
        await asyncio.sleep(args.every)


def main(argv: list[str] | None = None, *, settings: OperatorSettings | None = None) -> int:
    """``snh reconcile``; ``settings`` by default from the environment."""
    settings = settings or OperatorSettings.from_environ()
    parser = argparse.ArgumentParser(
        prog="snh reconcile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--hub-id", default=settings.hub_id)
    parser.add_argument(
        "--communities",
        default=settings.communities_file,
        required=settings.communities_file is None,
        help="the communities file (its regions are reconciled)",
    )
    parser.add_argument("--every", type=float, default=600, help="seconds between passes")
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="decide and log, change nothing")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return asyncio.run(_main(parser.parse_args(argv), settings))


if __name__ == "__main__":
    sys.exit(main())
