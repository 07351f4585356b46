"""Starting and stopping the local cloud and the hub, for the demo and the tests.

The local cloud runs in one process: the Synapse stand-in, and the AWS half
(``localcloud.stack``: moto, the SSM stand-in, the AWS front, the communities' resources,
the instance simulator and its notebook processes). The hub runs as a child process in its own
session (it starts configurable-http-proxy as its own child), so that stopping the demo can
stop the hub first, let it stop its proxy, and then kill whatever is left of that session;
then the local cloud stops every simulated notebook: Ctrl-C leaves no process behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from tornado.httpclient import AsyncHTTPClient

from . import demo_history
from .instances.simulator import DEFAULT_BOOT_DELAY
from .instances.sshd import local_user
from .machines.links import HUB_NAME
from .ports import free_port
from .stack import start_aws
from .synapse import serve as serve_synapse
from .synapse.directory import OAuthClient

if TYPE_CHECKING:
    from tornado.httpserver import HTTPServer

    from .stack import LocalAws

REPO = Path(__file__).resolve().parent.parent
HUB_CONFIG = REPO / "jupyterhub_config.py"
DEMO_CLIENT_ID = "notebook-hub-demo"
DEMO_CLIENT_SECRET = "demo-secret"

DEMO_USERS = """\
  alice    member of 'AD Knowledge Portal (demo)' and of the admin team -> admin
  bob      member of two communities -> picks one when starting a server
  mallory  in no allowed team -> refused, with the list of teams to join"""


def endpoints_path(state_dir: Path) -> Path:
    return state_dir / "endpoints.json"


def crypt_key(state_dir: Path) -> str:
    """The demo's auth_state key: made once, kept, so a restarted hub can read auth_state."""
    path = state_dir / "crypt_key"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


@dataclass
class LocalCloud:
    """The running stand-ins: their endpoints (as written to ``endpoints.json``) and handles."""

    endpoints: dict[str, Any]
    aws: LocalAws
    synapse_server: HTTPServer

    async def close(self) -> None:
        """Stop everything, simulated notebooks included."""
        try:
            await self.aws.close()
        finally:
            self.synapse_server.stop()
            await self.synapse_server.close_all_connections()


async def start_standins(
    state_dir: Path,
    hub_url: str,
    synapse_port: int,
    *,
    aws_port: int = 0,
    boot_delay: float = DEFAULT_BOOT_DELAY,
    light_instances: bool = False,
    real_boot: bool = False,
) -> LocalCloud:
    """Start the stand-ins on this loop; the endpoints are also written to disk.
    ``light_instances``: simulated instances boot without a notebook process of their own
    (``localcloud.instances.light``), for benchmarks with hundreds of servers.
    ``real_boot``: each instance a booted machine (``localcloud.instances.realboot``), whose
    notebook reaches the hub's API through the machine's hub link: the hub's API then
    listens on a port chosen here (``endpoints["real_boot"]``)."""
    hub_api_url = f"http://127.0.0.1:{free_port()}" if real_boot else None
    client = OAuthClient(
        client_id=DEMO_CLIENT_ID,
        client_secret=DEMO_CLIENT_SECRET,
        name="Synapse Notebook Hub (demo)",
        redirect_uris=[f"{hub_url.rstrip('/')}/hub/oauth_callback"],
    )
    _standin, synapse_server, base_url = await serve_synapse(synapse_port, clients=[client])
    try:
        aws = await start_aws(
            state_dir,
            front_port=aws_port,
            synapse_base_url=base_url,
            boot_delay=boot_delay,
            light_instances=light_instances,
            real_boot=real_boot,
            hub_url=hub_api_url,
        )
    except BaseException:
        synapse_server.stop()
        raise
    endpoints = {
        "synapse": {
            "base_url": base_url,
            "issuer": f"{base_url}/auth/v1",
            "signin_url": f"{base_url}/signin",
            "repo_endpoint": f"{base_url}/repo/v1",
            "control_url": f"{base_url}/_control",
            "client_id": client.client_id,
            "client_secret": client.client_secret,
        },
        "aws": aws.endpoints(),
        "hub": {"public_url": hub_url.rstrip("/")},
        "light_instances": light_instances,
        "real_boot": {"hub_api_url": hub_api_url} if hub_api_url else None,
        "pid": os.getpid(),
    }
    endpoints_path(state_dir).write_text(json.dumps(endpoints, indent=2) + "\n")
    return LocalCloud(endpoints, aws, synapse_server)


def hub_environment(endpoints: dict[str, Any], state_dir: Path) -> dict[str, str]:
    """The environment a real deployment would set, pointed at the stand-ins."""
    synapse = endpoints["synapse"]
    public_url = endpoints["hub"]["public_url"]
    parsed = urlparse(public_url)
    env = {
        **os.environ,
        "SYNAPSE_CLIENT_ID": synapse["client_id"],
        "SYNAPSE_CLIENT_SECRET": synapse["client_secret"],
        "SYNAPSE_ISSUER": synapse["issuer"],
        "SYNAPSE_SIGNIN_URL": synapse["signin_url"],
        "SNH_PUBLIC_URL": public_url,
        "SNH_BIND_URL": f"{parsed.scheme}://{parsed.netloc}",
        "SNH_STATE_DIR": str(state_dir / "hub"),
        "JUPYTERHUB_CRYPT_KEY": crypt_key(state_dir),
        # as hub_config/deploy/synapse-notebook-hub.service sets it (the unit says why)
        "MALLOC_ARENA_MAX": "2",
        "PATH": f"{REPO / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    aws = endpoints.get("aws")
    if aws:
        # The hub's boto3 talks to the AWS front with test credentials; a developer's own
        # AWS profile or session must not leak into it.
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            env.pop(name, None)
        env.update(
            {
                "SNH_AWS_ENDPOINT_URL": aws["endpoint_url"],
                "SNH_COMMUNITIES_FILE": aws["communities_file"],
                "AWS_ACCESS_KEY_ID": aws.get("access_key_id", "testing"),
                "AWS_SECRET_ACCESS_KEY": aws.get("secret_access_key", "testing"),
                "AWS_DEFAULT_REGION": aws["region"],
                # the simulated servers' sshd lets in the user running them (the images':
                # jovyan), which the home page's "Connect from your computer" lines name
                "SNH_SSH_USER": local_user(),
            }
        )
    real_boot = endpoints.get("real_boot")
    if real_boot:
        # the machines reach the hub's API through their hub link, by the link's name
        api = urlparse(real_boot["hub_api_url"])
        env["SNH_HUB_BIND_URL"] = real_boot["hub_api_url"]
        env["SNH_INSTANCE_HUB_URL"] = f"http://{HUB_NAME}:{api.port}"
        env["SNH_SSH_USER"] = "jovyan"
    return env


async def start_hub(env: dict[str, str], *extra_args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jupyterhub",
        "-f",
        str(HUB_CONFIG),
        *extra_args,
        env=env,
        cwd=str(REPO),
        start_new_session=True,
    )


async def stop_process_group(proc: asyncio.subprocess.Process, grace: float = 20) -> None:
    """SIGTERM the leader (the hub stops its proxy), then SIGKILL whatever is left."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


async def wait_for_url(url: str, proc: asyncio.subprocess.Process, within: float = 60) -> bool:
    client = AsyncHTTPClient()
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline and proc.returncode is None:
        try:
            await client.fetch(url, request_timeout=2)
            return True
        except Exception:
            await asyncio.sleep(0.25)
    return False


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _print_endpoints(endpoints: dict[str, Any]) -> None:
    aws = endpoints["aws"]
    print(f"Synapse stand-in: {endpoints['synapse']['base_url']}")
    print(f"AWS endpoint_url: {aws['endpoint_url']} (EC2, SSM, IAM, STS; region {aws['region']})")
    print(f"Communities file: {aws['communities_file']}")
    print(f"Simulated instances: {aws['instances_log']}")
    if endpoints.get("light_instances"):
        print("Light instances: one shared responder instead of a notebook process each")
    if endpoints.get("real_boot"):
        print("Real-boot instances: each a booted Debian machine running the bootstrap")


async def _standins_of(args: argparse.Namespace, state_dir: Path) -> LocalCloud:
    """`start_standins` as the command line of ``serve`` and ``demo`` asks."""
    return await start_standins(
        state_dir,
        args.hub_url,
        args.synapse_port,
        aws_port=args.aws_port,
        boot_delay=args.boot_delay,
        light_instances=args.light_instances,
        real_boot=args.real_boot,
    )


async def _serve(args: argparse.Namespace, state_dir: Path) -> int:
    stop = _stop_event()
    cloud = await _standins_of(args, state_dir)
    try:
        _print_endpoints(cloud.endpoints)
        print(f"Endpoints written to {endpoints_path(state_dir)}. Ctrl-C stops.", flush=True)
        await stop.wait()
    finally:
        await cloud.close()
    return 0


async def _hub(args: argparse.Namespace, state_dir: Path, endpoints: dict[str, Any]) -> int:
    stop = _stop_event()
    proc = await start_hub(hub_environment(endpoints, state_dir))
    waiter = asyncio.ensure_future(proc.wait())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    await stop_process_group(proc)
    return proc.returncode or 0


async def _demo(args: argparse.Namespace, state_dir: Path) -> int:
    stop = _stop_event()
    cloud = await _standins_of(args, state_dir)
    endpoints = cloud.endpoints
    env = hub_environment(endpoints, state_dir)
    # bob's spend so far this month, so that the demo shows a budget warning
    audit_log = Path(env["SNH_STATE_DIR"]) / "audit.log"
    demo_history.seed(audit_log, dt.datetime.now(dt.UTC), endpoints["aws"]["region"])
    try:
        proc = await start_hub(env)
    except BaseException:
        await cloud.close()
        raise
    try:
        public_url = endpoints["hub"]["public_url"]
        if await wait_for_url(f"{public_url}/hub/health", proc):
            print(
                f"\n  Synapse Notebook Hub demo is running.\n\n  Open {public_url}/ and sign "
                f"in with Synapse (the stand-in's form) as:\n{DEMO_USERS}\n\n  Endpoints: "
                f"{endpoints_path(state_dir)}\n  Ctrl-C stops everything.\n",
                flush=True,
            )
        waiter = asyncio.ensure_future(proc.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if proc.returncode not in (None, 0):
            print(
                f"The hub exited with status {proc.returncode}; see its log above.", file=sys.stderr
            )
    finally:
        try:
            await stop_process_group(proc)
        finally:
            await cloud.close()
    return proc.returncode or 0


def _state_dir(args: argparse.Namespace) -> Path:
    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    return state_dir


def run_serve(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args, _state_dir(args)))


def run_hub(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    path = endpoints_path(state_dir)
    if not path.exists():
        print(
            f"{path} not found: start the local cloud first (python -m localcloud serve)",
            file=sys.stderr,
        )
        return 1
    return asyncio.run(_hub(args, state_dir, json.loads(path.read_text())))


def run_demo(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args, _state_dir(args)))
