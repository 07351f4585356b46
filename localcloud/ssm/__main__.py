"""Run the SSM stand-in on its own.

``python -m localcloud.ssm --port 8200 --forward-to 127.0.0.1:8888 --access-key AKID:SECRET``

Answers the SSM API (``endpoint_url=http://127.0.0.1:8200``) and the data channel websockets
on one port. One managed instance, ``i-0123456789abcdef0`` (more with ``--instance``), has an
agent online whose every session is forwarded to ``--forward-to``, whatever ``portNumber`` the
session asks for. With ``--any-instance``, any well-formed instance id a client asks for is
taken as such a managed instance too (handy against instance ids that moto makes up); without
it, other ids get ``TargetNotConnected`` as on AWS.

Data-channel upgrades must be SigV4-signed with one of the ``--access-key`` pairs, as the
service requires; ``--allow-unsigned`` accepts unsigned upgrades too (the old behaviour).
``--message-rate`` models the service's per-session message rate (about 1,000 a second).

The first line on standard output is the base URL (so a launcher can read it); the stand-in
then serves until SIGINT or SIGTERM, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from .agent import AgentSettings
from .app import serve, shutdown
from .registry import DEFAULT_AGENT_VERSION, fixed_resolver
from .sigv4 import StaticCredentials

DEMO_INSTANCE_ID = "i-0123456789abcdef0"


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _access_key(value: str) -> tuple[str, str]:
    key, sep, secret = value.partition(":")
    if not sep or not key or not secret:
        raise argparse.ArgumentTypeError(f"expected ACCESS_KEY_ID:SECRET, got {value!r}")
    return key, secret


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m localcloud.ssm",
        description="Serve a stand-in for the SSM Session Manager API, data channel and agent.",
    )
    parser.add_argument("--port", type=int, default=8200, help="port (0: pick a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--forward-to",
        type=_host_port,
        required=True,
        metavar="HOST:PORT",
        help="where the agent connects for every session",
    )
    parser.add_argument(
        "--agent-version",
        default=DEFAULT_AGENT_VERSION,
        help="version the agent reports (3.0.196.0 or older: basic mode, no smux)",
    )
    parser.add_argument("--moto-url", help="moto server for every other SSM operation")
    parser.add_argument(
        "--idle-timeout", type=float, default=20 * 60, help="seconds (AWS default: 20 minutes)"
    )
    parser.add_argument(
        "--instance",
        action="append",
        default=[],
        metavar="ID",
        help=f"managed instance id (repeatable; default {DEMO_INSTANCE_ID})",
    )
    parser.add_argument(
        "--access-key",
        type=_access_key,
        action="append",
        default=[],
        metavar="ID:SECRET",
        help="a principal whose SigV4 signature opens data channels (repeatable)",
    )
    parser.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="accept data channel upgrades without a signature (AWS refuses them)",
    )
    parser.add_argument("--region", default="us-east-1", help="region upgrades are signed for")
    parser.add_argument(
        "--message-rate",
        type=float,
        default=None,
        metavar="N",
        help="stream-data messages per second and direction a session carries (AWS: ~1000)",
    )
    parser.add_argument(
        "--any-instance",
        action="store_true",
        help="treat any well-formed instance id as a managed instance with an online agent",
    )
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    """Start the stand-in, print its base URL, and serve forever."""
    args = parse_args(argv)
    host, port = args.forward_to
    resolver = fixed_resolver(host, port)
    try:
        standin, server, base_url = await serve(
            args.port,
            args.host,
            moto_url=args.moto_url,
            agent_version=args.agent_version,
            settings=AgentSettings(idle_timeout=args.idle_timeout, message_rate=args.message_rate),
            credentials=StaticCredentials(dict(args.access_key)),
            require_signature=not args.allow_unsigned,
            region=args.region,
        )
    except (ValueError, OSError) as exc:
        print(f"cannot start the SSM stand-in: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    for instance_id in args.instance or [DEMO_INSTANCE_ID]:
        try:
            standin.register(instance_id, resolver)
        except ValueError as exc:
            print(f"--instance: {exc}", file=sys.stderr)
            raise SystemExit(2) from exc
    if args.any_instance:
        standin.auto_register = resolver
    print(base_url, flush=True)
    print(
        f"SSM endpoint_url: {base_url}  instances: {', '.join(args.instance or [DEMO_INSTANCE_ID])}"
        f"{' (and any other)' if args.any_instance else ''} -> {host}:{port}, agent "
        f"{args.agent_version}{', moto ' + args.moto_url if args.moto_url else ''}",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await shutdown(standin, server)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
