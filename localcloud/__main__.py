"""``python -m localcloud serve | hub | demo`` — the whole system on one machine.

- ``serve``: the stand-ins in this process, until Ctrl-C: Synapse, and AWS (moto for EC2, SSM
  parameters, IAM and STS; the SSM Session Manager stand-in; one AWS endpoint in front of
  both; the instance simulator, which runs a real ``jupyterhub-singleuser`` for each running
  instance; with ``--light-instances`` one shared responder answers for all of them). Their
  URLs are written to ``.localcloud/endpoints.json``, the communities file with the ids that
  exist in moto to ``.localcloud/communities.yaml``.
- ``hub``: JupyterHub (with configurable-http-proxy) against the stand-ins named in that
  file, so the hub can be stopped and restarted while the local cloud keeps running.
- ``demo``: both, and a banner that says what to open and who to sign in as.
"""

from __future__ import annotations

import argparse
import sys

from .instances.simulator import DEFAULT_BOOT_DELAY
from .launcher import run_demo, run_hub, run_serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m localcloud",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--state-dir",
        default=".localcloud",
        help="where endpoints.json, keys and the hub's database live",
    )
    parser.add_argument(
        "--hub-url",
        default="http://127.0.0.1:8000",
        help="the URL the hub's proxy listens on and users open",
    )
    parser.add_argument(
        "--synapse-port",
        type=int,
        default=8100,
        help="port of the Synapse stand-in (0: any free port)",
    )
    parser.add_argument(
        "--aws-port",
        type=int,
        default=0,
        help="port of the AWS front, the endpoint_url of every AWS service (0: any free port)",
    )
    parser.add_argument(
        "--boot-delay",
        type=float,
        default=DEFAULT_BOOT_DELAY,
        help="seconds a simulated instance takes to boot before its notebook starts",
    )
    parser.add_argument(
        "--light-instances",
        action="store_true",
        help="simulated instances run no notebook process: one shared responder answers for "
        "all of them (benchmarks with hundreds of servers)",
    )
    parser.add_argument(
        "--real-boot",
        action="store_true",
        help="each instance is a booted Debian machine that runs the user data, the bootstrap "
        "and the notebook image itself (needs root; builds its root file system and image "
        "once, a few minutes)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the stand-ins until interrupted")
    sub.add_parser("hub", help="run JupyterHub against running stand-ins")
    sub.add_parser("demo", help="run the stand-ins and the hub together")
    args = parser.parse_args(argv)
    runner = {"serve": run_serve, "hub": run_hub, "demo": run_demo}[args.command]
    return runner(args)


if __name__ == "__main__":
    sys.exit(main())
