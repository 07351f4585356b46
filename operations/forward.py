"""``snh forward``: the tunnel as a command, like ``aws ssm start-session``.

    snh forward --target i-0123456789abcdef0 --remote-port 8888 \\
        --local-port 9999 [--region R] [--endpoint-url URL] [--profile P]

Credentials and region come from boto3's usual chain (environment, profile, instance role);
the data channel is SigV4-signed with them, and a lost websocket is resumed, as the official
session-manager-plugin 1.2.764.0 does. ``--max-sessions`` spreads connections over several
sessions (1: one session, like ``aws ssm start-session``).
Once the port is ready it prints exactly one line on stdout,
``Forwarding 127.0.0.1:9999 -> i-… port 8888 (session …)``, so scripts can wait for it; it
then runs until SIGINT or SIGTERM, terminates the session and exits 0. A session that cannot
be opened is one line on stderr naming the call that failed, and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from spawner.ssm.datachannel import DEFAULT_DOCUMENT, SessionError
from spawner.ssm.tunnel import DEFAULT_MAX_SESSIONS, Tunnel, TunnelSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snh",
        description="Session Manager port forwarding without session-manager-plugin.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fwd = sub.add_parser(
        "forward",
        help="forward a local port to a port on a managed instance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fwd.add_argument("--target", required=True, help="managed instance id (i-…, mi-…)")
    fwd.add_argument("--remote-port", type=int, required=True, help="port on the instance")
    fwd.add_argument(
        "--local-port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)"
    )
    fwd.add_argument("--region", help="AWS region (default: boto3's configuration)")
    fwd.add_argument("--endpoint-url", help="SSM endpoint, e.g. a local stand-in")
    fwd.add_argument("--profile", help="profile from the AWS config/credentials files")
    fwd.add_argument(
        "--document",
        default=DEFAULT_DOCUMENT,
        help=f"Session document (default: {DEFAULT_DOCUMENT})",
    )
    fwd.add_argument(
        "--max-sessions",
        type=int,
        default=DEFAULT_MAX_SESSIONS,
        help=f"sessions to spread connections over (default: {DEFAULT_MAX_SESSIONS})",
    )
    fwd.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr (-vv: debug)"
    )
    return parser


async def _forward(args: argparse.Namespace) -> int:
    settings = TunnelSettings(
        document_name=args.document,
        max_sessions=max(1, args.max_sessions),
        start_timeout=0.0,  # like `aws ssm start-session`: the first failure is reported
    )
    tunnel = Tunnel(
        args.target,
        args.remote_port,
        settings,
        local_port=args.local_port,
        region=args.region,
        endpoint_url=args.endpoint_url,
        profile=args.profile,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    starting = asyncio.ensure_future(tunnel.start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # interrupted before the first session was up
        starting.cancel()
        with contextlib.suppress(BaseException):
            await starting
        await tunnel.stop()
        return 0
    try:
        starting.result()
    except SessionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"error: cannot listen on 127.0.0.1:{args.local_port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    print(
        f"Forwarding {tunnel.settings.local_host}:{tunnel.local_port} -> {args.target} "
        f"port {args.remote_port} (session {tunnel.session_id})",
        flush=True,
    )
    await stopping
    await tunnel.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(_forward(args))


if __name__ == "__main__":
    sys.exit(main())
