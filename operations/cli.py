"""Operator commands: ``snh servers`` and ``snh reap``.

``servers`` prints every server of the hub (the admin page's table, `operations.admin_page`)
from the hub's REST API and EC2::

    JUPYTERHUB_API_URL=https://hub.example.org/hub/api JUPYTERHUB_API_TOKEN=… \\
        snh servers [--json]
    snh servers --hub-url https://hub.example.org --token-file ~/.hub-token

The token needs the scopes ``list:users``, ``read:users``, ``read:servers`` (and
``admin:server_state`` to match instances by the id the spawner saved, rather than by tags).

``reap`` terminates the instances stopped longer than their community's ``dormancy_days``
(`operations.reaper`); run it daily with the hub's IAM role::

    snh reap [--dry-run] [--hub-id ID] [--communities FILE] [--region R]
                           [--endpoint-url URL] [--audit-log PATH] [--now ISO-TIME]

``--now 2025-06-01T00:00Z`` reaps as if it were that time: with ``--dry-run``, a preview of
what a later run will remove (e.g. before shortening a community's ``dormancy_days``);
without it, a way to remove servers early (it only ever removes *stopped* instances, and each
is still checked to be stopped, and snapshotted per its community's policy, first).

AWS credentials and region come from the usual boto3 chain; ``--region`` (repeatable)
narrows the regions, which are otherwise those of the communities file. Defaults come from
the hub's environment variables (``SNH_HUB_ID``, ``SNH_COMMUNITIES_FILE``,
``SNH_AWS_ENDPOINT_URL``, ``SNH_STATE_DIR`` for ``<state dir>/audit.log``). Exit status: 0,
1 when something failed, 2 for a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from hub_config.communities import (
    DEFAULT_COMMUNITIES_PATH,
    CommunitiesConfig,
    CommunitiesError,
    load_communities,
    load_instance_types,
)
from hub_config.settings import OperatorSettings
from spawner.region import Regions, aws_of

from . import audit, check, client, forward, prices, reconcile, reports
from .admin_page import (
    AuditRuns,
    build_rows,
    describe_views,
    format_table,
    hub_servers_from_api,
    totals,
)
from .reaper import Reaper


class UsageError(Exception):
    pass


def _communities(args: argparse.Namespace, *, required: bool) -> CommunitiesConfig | None:
    path = args.communities or args.settings.communities_file or DEFAULT_COMMUNITIES_PATH
    try:
        return load_communities(path)
    except CommunitiesError as e:
        if required:
            raise UsageError(str(e)) from None
        print(f"warning: {e}", file=sys.stderr)
        return None


def _regions(args: argparse.Namespace, communities: CommunitiesConfig | None) -> list[str]:
    if args.region:
        return sorted(set(args.region))
    if communities is None:
        raise UsageError("no communities file to take the regions from: pass --region")
    return sorted({c.region for c in communities.communities})


def _clients(args: argparse.Namespace) -> Regions:
    """The clients the command uses: ``args.regions`` when `main` was given some (tests),
    else new ones for ``--endpoint-url``."""
    return args.regions if args.regions is not None else Regions(args.endpoint_url)


def _common(parser: argparse.ArgumentParser, settings: OperatorSettings) -> None:
    parser.add_argument(
        "--hub-id",
        default=settings.hub_id,
        help="the hub's id (tag jupyterhub:hub); default $SNH_HUB_ID or synapse-notebook-hub",
    )
    parser.add_argument(
        "--communities",
        metavar="FILE",
        help="communities file; default $SNH_COMMUNITIES_FILE or hub_config/communities.yaml",
    )
    parser.add_argument(
        "--region",
        action="append",
        help="AWS region (repeatable); default: every region of the communities file",
    )
    parser.add_argument(
        "--endpoint-url",
        default=settings.aws_endpoint_url,
        help="one endpoint for every AWS service (the local cloud); default $SNH_AWS_ENDPOINT_URL",
    )
    parser.add_argument(
        "--audit-log",
        metavar="PATH",
        help="the audit log; default $SNH_STATE_DIR/audit.log (or ./audit.log)",
    )


# ------------------------------------------------------------------------------------------
# servers
# ------------------------------------------------------------------------------------------


def _api_url(args: argparse.Namespace) -> str:
    if args.hub_url:
        return args.hub_url.rstrip("/") + "/hub/api"
    url = args.settings.api_url
    if not url:
        raise UsageError("pass --hub-url, or set JUPYTERHUB_API_URL")
    return url.rstrip("/")


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        return Path(args.token_file).expanduser().read_text().strip()
    token = args.token or args.settings.api_token
    if not token:
        raise UsageError("set JUPYTERHUB_API_TOKEN, or pass --token-file (or --token)")
    return token


def fetch_users(api_url: str, token: str, *, page_size: int = 200) -> list[dict[str, Any]]:
    """Every user model with all its servers (stopped ones too), following pagination."""
    users: list[dict[str, Any]] = []
    offset = 0
    while True:
        query = urllib.parse.urlencode(
            {"include_stopped_servers": "1", "offset": offset, "limit": page_size}
        )
        request = urllib.request.Request(
            f"{api_url}/users?{query}",
            headers={
                "Authorization": f"token {token}",
                "Accept": "application/jupyterhub-pagination+json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as e:
            hint = (
                " (the token needs list:users, read:users and read:servers)"
                if e.code == 403
                else ""
            )
            raise UsageError(f"GET {api_url}/users: HTTP {e.code} {e.reason}{hint}") from None
        except urllib.error.URLError as e:
            raise UsageError(f"GET {api_url}/users: {e.reason}") from None
        if isinstance(body, list):  # a hub without pagination
            return body
        users.extend(body.get("items", []))
        following = (body.get("_pagination") or {}).get("next")
        if not following:
            return users
        offset = int(following.get("offset", offset + page_size))


async def _servers(args: argparse.Namespace) -> int:
    api_url, token = _api_url(args), _token(args)
    communities = _communities(args, required=False)
    users = await asyncio.to_thread(fetch_users, api_url, token)
    servers = hub_servers_from_api(users)
    regions = set(args.region or [])
    if not regions:
        regions = {c.region for c in communities.communities} if communities else set()
        regions |= {s.region for s in servers if s.region}
    if not regions:
        raise UsageError("no region to describe: pass --region")
    views, failed = await describe_views(_clients(args), args.hub_id, regions)
    now = dt.datetime.now(dt.UTC)
    rows = build_rows(
        servers,
        views,
        communities,
        now,
        runs=AuditRuns(args.audit_log or args.settings.audit_log).runs(now),
        price_table=load_instance_types(),
        unknown_regions=failed,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "time": audit.isoformat(now),
                    "rows": [r.as_dict() for r in rows],
                    "totals": totals(rows),
                    "unreachable_regions": failed,
                },
                indent=2,
            )
        )
    else:
        print(format_table(rows, now))
        t = totals(rows)
        print(
            f"\n{t['servers']} server(s), {t['running']} running; estimated compute cost "
            f"this month {'≥ ' if not t['cost_complete'] else ''}${t['cost_this_month_usd']:.2f}"
        )
        for region in failed:
            print(f"warning: EC2 in {region} could not be described", file=sys.stderr)
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------
# reap
# ------------------------------------------------------------------------------------------


def _time(text: str) -> dt.datetime:
    """An ISO-8601 time for ``--now`` (UTC unless it says otherwise)."""
    try:
        return audit.parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO-8601 time: {text!r} (e.g. 2025-06-01T00:00Z)"
        ) from None


def format_plans(outcomes: list[Any], now: dt.datetime) -> str:
    header = ("INSTANCE", "USER", "SERVER", "COMMUNITY", "STOPPED SINCE", "DAYS", "ACTION")
    lines = [header]
    for outcome in outcomes:
        item = outcome.plan
        since = item.stopped_since
        lines.append(
            (
                item.view.instance_id,
                item.user,
                item.server or "(default)",
                item.community_id or "?",
                f"{since:%Y-%m-%d %H:%M}" if since else "unknown",
                str((now - since).days) if since else "",
                outcome.done,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _reap_json(report: Any, dry_run: bool, now: dt.datetime) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "now": audit.isoformat(now),
        "instances": [
            {
                "instance_id": o.plan.view.instance_id,
                "user": o.plan.user,
                "server": o.plan.server,
                "community": o.plan.community_id,
                "stopped_since": audit.isoformat(o.plan.stopped_since)
                if o.plan.stopped_since
                else None,
                "removal_date": audit.isoformat(o.plan.removal_date)
                if o.plan.removal_date
                else None,
                "action": o.plan.action,
                "done": o.done,
                "snapshot_id": o.result.snapshot_id if o.result else None,
            }
            for o in report.outcomes
        ],
        "volumes": [{"volume_id": v, "done": d} for v, d in report.volumes],
        "errors": report.errors,
    }


async def _reap(args: argparse.Namespace) -> int:
    communities = _communities(args, required=True)
    regions = _regions(args, communities)
    log = audit.configure(args.audit_log or args.settings.audit_log)
    reaper = Reaper(
        aws_of(_clients(args)),
        args.hub_id,
        regions,
        communities,
        audit_log=log,
        dry_run=args.dry_run,
        wait_for_snapshot=args.wait_for_snapshots,
        now=(lambda: args.now) if args.now else audit.utcnow,
    )
    report = await reaper.run()
    await log.aflush()
    now = args.now or dt.datetime.now(dt.UTC)
    if args.json:
        print(json.dumps(_reap_json(report, args.dry_run, now), indent=2))
    else:
        if args.dry_run:
            print("DRY RUN: nothing is changed.\n")
        if args.now:
            print(f"As if it were {audit.isoformat(args.now)}.\n")
        if report.outcomes:
            print(format_plans(report.outcomes, now))
        else:
            print(f"No stopped instance of hub {args.hub_id!r} in {', '.join(regions)}.")
        for volume_id, done in report.volumes:
            print(f"volume {volume_id}: {done}")
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
    return 0 if report.ok else 1


# ------------------------------------------------------------------------------------------


def parser(settings: OperatorSettings | None = None) -> argparse.ArgumentParser:
    settings = settings or OperatorSettings()
    top = argparse.ArgumentParser(
        prog="snh",
        description="Synapse Notebook Hub's commands: list the servers, reap dormant ones, "
        "reconcile, check the communities file, forward a port through Session Manager.",
    )
    sub = top.add_subparsers(dest="command", required=True)
    for name, text in _DELEGATED_HELP.items():
        delegated = sub.add_parser(name, help=text, add_help=False)
        delegated.add_argument("args", nargs=argparse.REMAINDER)

    servers = sub.add_parser("servers", help="list every server: instance, uptime, cost")
    _common(servers, settings)
    servers.add_argument("--json", action="store_true", help="print JSON instead of a table")
    servers.add_argument(
        "--hub-url",
        help="the hub's URL (e.g. https://hub.example.org); default: $JUPYTERHUB_API_URL",
    )
    servers.add_argument(
        "--token",
        help="a hub API token (visible to other local users in the process list: prefer "
        "$JUPYTERHUB_API_TOKEN or --token-file)",
    )
    servers.add_argument("--token-file", help="a file holding a hub API token")

    reap = sub.add_parser("reap", help="terminate instances stopped longer than dormancy_days")
    _common(reap, settings)
    reap.add_argument(
        "--dry-run", action="store_true", help="list what would be done, change nothing"
    )
    reap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    reap.add_argument(
        "--wait-for-snapshots",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for a snapshot to complete before keeping the volume for a "
        "later run to delete (default 300)",
    )
    reap.add_argument(
        "--now",
        type=_time,
        metavar="ISO-TIME",
        help="reap as if it were this time (e.g. 2025-06-01T00:00Z): with --dry-run, a "
        "preview of a later run; without it, removes servers whose removal date is before "
        "then (stopped instances only, snapshotted per policy as always)",
    )
    return top


#: Commands whose parsers live with their code: ``snh NAME ARGS...`` is their ``main``.
_DELEGATED_HELP = {
    "reconcile": "stop instances the hub no longer knows, at once or every N seconds",
    "check": "validate a communities file as the hub does at start-up",
    "keys": "print the communities file's keys as the README's Markdown table",
    "prices": "refresh the instance-type table's prices from the AWS Price List API",
    "report": "each community's spend this month: text, CSV, or e-mail to its managers",
    "forward": "forward a local port to a port of your server (--server, through the hub's "
    "relay), or of an instance (--target, with AWS credentials)",
    "login": "keep the hub's URL and your API token for the relay commands",
    "ssh-proxy": "ssh's ProxyCommand: a connection to a port of your server, via the hub",
    "ssh-config": "print the ~/.ssh/config block for your server",
}


def main(
    argv: list[str] | None = None,
    *,
    regions: Regions | None = None,
    settings: OperatorSettings | None = None,
) -> int:
    """``snh``: the console script (``pyproject.toml``); ``python -m operations`` too.
    ``regions``: the AWS clients to use (tests pass fakes), by default new ones;
    ``settings``: by default from the environment (`OperatorSettings`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    settings = settings or OperatorSettings.from_environ()
    if argv and argv[0] == "reconcile":
        return reconcile.main(argv[1:], settings=settings)
    if argv and argv[0] in ("check", "keys"):
        return check.main(argv)
    if argv and argv[0] == "prices":
        return prices.main(argv[1:])
    if argv and argv[0] == "report":
        return reports.main(argv[1:], settings)
    if client.handles(argv):  # one's own server, through the hub's relay
        return client.main(argv, settings)
    if argv and argv[0] == "forward":
        return forward.main(argv)
    args = parser(settings).parse_args(argv)
    args.regions, args.settings = regions, settings
    command = {"servers": _servers, "reap": _reap}[args.command]
    try:
        return asyncio.run(command(args))
    except UsageError as e:
        print(f"snh {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
