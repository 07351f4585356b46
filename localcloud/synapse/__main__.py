"""Run the Synapse stand-in on its own: ``python -m localcloud.synapse --port 8100``.

The first line on standard output is the base URL (so a launcher can read it); the stand-in
then serves until interrupted. Without ``--client-id`` the demo client (``notebook-hub-demo``)
is registered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys

from .directory import DEMO_REDIRECT_URI, OAuthClient, demo_client
from .server import serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m localcloud.synapse",
        description="Serve a stand-in for Synapse's OIDC server and REST API on loopback.",
    )
    parser.add_argument("--port", type=int, default=8100, help="port (0: pick a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--client-id", help="register this OAuth client instead of the demo one")
    parser.add_argument("--client-secret", help="the client's secret (with --client-id)")
    parser.add_argument("--client-name", default="Synapse Notebook Hub", help="shown at consent")
    parser.add_argument(
        "--redirect-uri",
        action="append",
        help=f"a registered redirect URI; repeatable (default {DEMO_REDIRECT_URI})",
    )
    args = parser.parse_args(argv)
    if args.client_id and not args.client_secret:
        parser.error("--client-id needs --client-secret")
    return args


async def main(argv: list[str] | None = None) -> None:
    """Start the stand-in, print its base URL, and serve forever."""
    args = parse_args(argv)
    if args.client_id:
        client = OAuthClient(
            client_id=args.client_id,
            client_secret=args.client_secret,
            name=args.client_name,
            redirect_uris=args.redirect_uri or [DEMO_REDIRECT_URI],
        )
    else:
        client = demo_client()
        if args.redirect_uri:
            client.redirect_uris = list(args.redirect_uri)
    try:
        _, server, base_url = await serve(args.port, args.host, clients=[client])
    except (ValueError, OSError) as exc:
        print(f"cannot start the Synapse stand-in: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    print(base_url, flush=True)
    print(
        f"discovery: {base_url}/auth/v1/.well-known/openid-configuration\n"
        f"client: {client.client_id} redirect URIs: {', '.join(client.redirect_uris)}",
        file=sys.stderr,
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        server.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
