"""The instance simulator: an instance launched in moto becomes a real ``jupyterhub-singleuser``
reached through the SSM stand-in, as a real instance's bootstrap would make it.

The user data is written here by hand (the ``server.conf`` documented in docs/spawner.md inside
a ``#cloud-config``), and so are the parameters the hub would write. ``jupyterhub-singleuser``
needs a hub API at start-up (it asks ``$JUPYTERHUB_API_URL`` for the hub's version and exits
if nobody answers) and to check tokens (``GET /hub/api/user``): a small fake hub API in this
test answers both.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import jupyterhub
import pytest
import pytest_asyncio
import tornado.web
from botocore.exceptions import ClientError
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from localcloud.aws_stack import LocalAws, start_aws
from localcloud.instances.userdata import UserDataError, parse_user_data, read_server_conf
from localcloud.moto_setup import CloudIds
from spawner.ssm.tunnel import Tunnel

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).resolve().parents[1]
PREFIX = "/synapse-notebook-hub/test-hub"
USER_DATA = """#cloud-config
write_files:
  - path: /etc/notebook-hub/server.conf
    owner: root:root
    permissions: "0644"
    content: |
      NOTEBOOK_PARAMETER_PATH={path}
      AWS_REGION=us-east-1
      NOTEBOOK_PORT=8888
      HOME_DEVICE=/dev/sdf
runcmd:
  - [systemctl, enable, --now, --no-block, notebook-bootstrap.service]
"""


class FakeHubApi(tornado.web.RequestHandler):
    """What ``jupyterhub-singleuser`` asks its hub: the version, and who owns a token."""

    def initialize(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens

    def get(self, path: str) -> None:
        self.set_header("X-JupyterHub-Version", jupyterhub.__version__)
        if path in ("", "/"):
            self.finish({"version": jupyterhub.__version__})
        elif path == "/user":
            token = self.request.headers.get("Authorization", "").removeprefix("token ").strip()
            name = self.tokens.get(token)
            if name is None:
                raise tornado.web.HTTPError(403)
            self.finish(
                {
                    "kind": "user",
                    "name": name,
                    "admin": False,
                    "groups": [],
                    "scopes": [f"access:servers!user={name}"],
                    "session_id": None,
                }
            )
        else:
            raise tornado.web.HTTPError(404)


@dataclass
class World:
    """A local cloud as the tests drive it: boto3 on its front, its ids, the fake hub."""

    client: Callable[[str], Any]
    ids: CloudIds
    hub_url: str
    tokens: dict[str, str]

    async def call(self, service: str, operation: str, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.client(service), operation), **kwargs)

    def hub_env(self, user: str, path: str, token: str) -> dict[str, str]:
        prefix = f"/user/{user}/"
        return {
            "JUPYTERHUB_API_TOKEN": token,
            "JPY_API_TOKEN": token,
            "JUPYTERHUB_API_URL": f"{self.hub_url}/hub/api",
            "JUPYTERHUB_CLIENT_ID": f"jupyterhub-user-{user}",
            "JUPYTERHUB_USER": user,
            "JUPYTERHUB_SERVER_NAME": "",
            "JUPYTERHUB_BASE_URL": "/",
            "JUPYTERHUB_SERVICE_PREFIX": prefix,
            "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:8888{prefix}",
            "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback",
            "JUPYTERHUB_OAUTH_ACCESS_SCOPES": json.dumps([f"access:servers!user={user}"]),
            "SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME": f"{path}/synapse-token",
        }

    async def write_parameters(self, user: str, path: str, kind: str = "jupyter") -> str:
        token = f"hubtoken-{secrets.token_hex(16)}"
        self.tokens[token] = user
        config = {
            "image": "ghcr.io/example/notebook@sha256:" + "0" * 64,
            "image_kind": kind,
            "port": 8888,
            "user": user,
            "server": "",
        }
        await self.call(
            "ssm", "put_parameter", Name=f"{path}/config", Value=json.dumps(config), Type="String"
        )
        await self.call(
            "ssm",
            "put_parameter",
            Name=f"{path}/jupyterhub-env",
            Value=json.dumps(self.hub_env(user, path, token)),
            Type="SecureString",
        )
        return token

    async def launch(self, user: str, *, kind: str = "jupyter", parameters: bool = True) -> Launch:
        path = f"{PREFIX}/{user}/_"
        token = await self.write_parameters(user, path, kind) if parameters else ""
        answer = await self.call(
            "ec2",
            "run_instances",
            ImageId=self.ids.ami,
            MinCount=1,
            MaxCount=1,
            InstanceType="t3.large",
            SubnetId=self.ids.subnets[0],
            SecurityGroupIds=[self.ids.security_group_id],
            UserData=USER_DATA.format(path=path),
            IamInstanceProfile={"Arn": self.ids.communities["ad-portal"].instance_profile_arn},
            BlockDeviceMappings=[
                {"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 30, "DeleteOnTermination": True}},
                {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 50, "DeleteOnTermination": True}},
            ],
        )
        return Launch(answer["Instances"][0]["InstanceId"], user, path, token)

    async def start_session(self, instance_id: str) -> dict[str, Any]:
        return await self.call(
            "ssm",
            "start_session",
            Target=instance_id,
            DocumentName="AWS-StartPortForwardingSession",
            Parameters={"portNumber": ["8888"], "localPortNumber": ["0"]},
        )

    async def session_refused(self, instance_id: str) -> str:
        with pytest.raises(ClientError) as info:
            await self.start_session(instance_id)
        return info.value.response["Error"]["Code"]


@dataclass
class Launch:
    instance_id: str
    user: str
    path: str
    token: str


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hub_api() -> AsyncIterator[tuple[str, dict[str, str]]]:
    tokens: dict[str, str] = {}
    app = tornado.web.Application([(r"/hub/api(.*)", FakeHubApi, {"tokens": tokens})])
    sockets = bind_sockets(0, "127.0.0.1")
    hub = HTTPServer(app)
    hub.add_sockets(sockets)
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}", tokens
    hub.stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module", autouse=True)
async def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path]]:
    """``python -m localcloud serve`` in a process of its own, for the Ctrl-C test; started
    with the module so that its start-up overlaps the other tests."""
    state = tmp_path_factory.mktemp("served")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "localcloud",
        "--state-dir",
        str(state),
        "--synapse-port",
        "0",
        "--boot-delay",
        "0",
        "serve",
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    yield proc, state
    if proc.returncode is None:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def aws(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalAws]:
    local = await start_aws(
        tmp_path_factory.mktemp("cloud"), boot_delay=0.2, synapse_base_url="http://127.0.0.1:9"
    )
    yield local
    await local.close()


@pytest.fixture
def world(aws: LocalAws, hub_api: tuple[str, dict[str, str]]) -> World:
    return World(aws.client, aws.ids, *hub_api)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (its parent has not reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def proc_file(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def files_containing(directory: Path, needle: str) -> list[Path]:
    found = []
    for path in directory.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            found.append(path)
    return found


async def fetch(url: str, token: str | None = None, **kwargs: Any) -> HTTPResponse:
    headers = {"Authorization": f"token {token}"} if token else {}
    return await AsyncHTTPClient().fetch(
        url, headers=headers, raise_error=False, follow_redirects=False, **kwargs
    )


# --- tests ---------------------------------------------------------------------------------------


async def test_server_conf_is_read_as_the_bootstrap_reads_it() -> None:
    """The spawner's own user data, and cloud-init forms the hub does not use (base64 content,
    quoted values) through the simulator's fallback parser."""
    from spawner.bootstrap import BootstrapConfig, render_user_data

    rendered = render_user_data(BootstrapConfig(parameter_path="/p/h/u/_", region="us-east-1"))
    assert read_server_conf(rendered) == {
        "NOTEBOOK_PARAMETER_PATH": "/p/h/u/_",
        "AWS_REGION": "us-east-1",
        "NOTEBOOK_PORT": "8888",
        "HOME_DEVICE": "/dev/sdf",
    }
    encoded = base64.b64encode(b"NOTEBOOK_PARAMETER_PATH='/p/x'\nHOME_DEVICE=/dev/xvdf\n")
    other = (
        "#cloud-config\nwrite_files:\n  - path: /etc/notebook-hub/server.conf\n"
        f"    encoding: b64\n    content: {encoded.decode()}\n"
    )
    assert parse_user_data(other) == {"NOTEBOOK_PARAMETER_PATH": "/p/x", "HOME_DEVICE": "/dev/xvdf"}
    with pytest.raises(UserDataError):
        read_server_conf("#!/bin/bash\necho not cloud-config\n")


async def test_an_instance_lives_as_a_real_notebook(world: World, aws: LocalAws) -> None:
    simulator = aws.simulator
    before = aws.front.calls.count("ec2", "DescribeInstances")
    alice = await world.launch("alice")
    iid = alice.instance_id
    # Booting: the agent is not online yet.
    assert await world.session_refused(iid) == "TargetNotConnected"

    sim = await simulator.wait_for(iid, "running", 30)
    first_pid, volume_dir = sim.pid, sim.volume_dir
    assert first_pid and sim.port and volume_dir == aws.simulator.volumes_dir / sim.home_volume
    info = await world.call("ssm", "describe_instance_information")
    assert iid in [i["InstanceId"] for i in info["InstanceInformationList"]]

    # The hub's path: a tunnel through the SSM stand-in to the instance's 8888.
    async with Tunnel(iid, 8888, ssm_client=aws.client("ssm")) as tunnel:
        version = await fetch(f"{tunnel.url}/user/alice/api")
        assert version.code == 200 and "version" in json.loads(version.body)
        saved = await fetch(
            f"{tunnel.url}/user/alice/api/contents/notes.txt",
            alice.token,
            method="PUT",
            body=json.dumps({"type": "file", "format": "text", "content": "kept on the volume"}),
        )
        assert saved.code in (200, 201), saved.body
        assert (await fetch(f"{tunnel.url}/user/alice/api/contents", "wrong-token")).code == 403
    assert (volume_dir / "notes.txt").read_text() == "kept on the volume"

    # Secrets: in the environment, never on the command line.
    cmdline = proc_file(first_pid, "cmdline")
    assert b"jupyterhub-singleuser" in cmdline and alice.token.encode() not in cmdline
    raw_environ = proc_file(first_pid, "environ")
    assert alice.token.encode() in raw_environ
    environ = dict(item.split("=", 1) for item in raw_environ.decode().split("\0") if "=" in item)
    assert environ["HOME"] == str(volume_dir)
    assert environ["AWS_ENDPOINT_URL"] == aws.front_url
    assert environ["AWS_SESSION_TOKEN"] and environ["AWS_ACCESS_KEY_ID"].startswith("ASIA")
    synapse_config = (volume_dir / ".synapseConfig").read_text()
    assert "[endpoints]" in synapse_config and "repoEndpoint = http://127.0.0.1:9/repo/v1" in (
        synapse_config
    )

    # Stop: the process goes, the agent goes.
    await world.call("ec2", "stop_instances", InstanceIds=[iid])
    await simulator.wait_for(iid, "stopped", 15)
    assert not alive(first_pid)
    assert await world.session_refused(iid) == "TargetNotConnected"

    # Start: a new process on the same volume; the file is still there.
    await world.call("ec2", "start_instances", InstanceIds=[iid])
    sim = await simulator.wait_for(iid, "running", 30)
    assert sim.pid != first_pid and sim.volume_dir == volume_dir and sim.boots == 2
    async with Tunnel(iid, 8888, ssm_client=aws.client("ssm")) as tunnel:
        kept = await fetch(f"{tunnel.url}/user/alice/api/contents/notes.txt", alice.token)
        assert json.loads(kept.body)["content"] == "kept on the volume"
    second_pid = sim.pid
    assert second_pid is not None

    # Terminate: process and agent gone; the volume was DeleteOnTermination, so is its dir.
    await world.call("ec2", "terminate_instances", InstanceIds=[iid])
    await simulator.wait_for(iid, "terminated", 15)
    assert not alive(second_pid)
    assert await world.session_refused(iid) == "TargetNotConnected"
    for _ in range(50):
        if not volume_dir.exists():
            break
        await asyncio.sleep(0.1)
    assert not volume_dir.exists()

    # The hub's API token is in no file of the volumes, the consoles or the activity log.
    log = aws.simulator.activity.path
    assert files_containing(aws.state_dir / "volumes", alice.token) == []
    assert files_containing(aws.state_dir / "consoles", alice.token) == []
    assert alice.token not in log.read_text()
    assert f"{iid} agent online" in log.read_text()
    # The simulator watches moto directly: none of the hub's DescribeInstances calls are its.
    assert aws.front.calls.count("ec2", "DescribeInstances") == before


async def test_rstudio_page_and_restart_after_a_crash(world: World, aws: LocalAws) -> None:
    simulator = aws.simulator
    bob = await world.launch("bob", kind="rstudio")
    sim = await simulator.wait_for(bob.instance_id, "running", 30)
    base = f"http://127.0.0.1:{sim.port}/user/bob"
    landing = await fetch(f"{base}/")
    assert landing.code == 302 and landing.headers["Location"].rstrip("?").endswith(
        "/user/bob/rstudio"
    )
    page = await fetch(f"{base}/rstudio", bob.token)
    assert page.code == 200 and b"rserver" in page.body
    assert (await fetch(f"{base}/rstudio")).code in (302, 403)  # the hub's login, as RStudio's

    # A notebook that dies on its own comes back (docker's restart policy), agent still online.
    crashed = simulator.kill_notebook(bob.instance_id)
    assert crashed is not None
    for _ in range(300):
        sim = simulator.get(bob.instance_id)
        if sim and sim.restarts == 1 and sim.phase == "running":
            break
        await asyncio.sleep(0.05)
    assert sim is not None and sim.phase == "running" and sim.pid not in (None, crashed)
    assert aws.ssm.instances.get(bob.instance_id) is not None
    assert "restart policy unless-stopped" in simulator.activity.path.read_text()
    await world.call("ec2", "terminate_instances", InstanceIds=[bob.instance_id])
    await simulator.wait_for(bob.instance_id, "terminated", 15)


async def test_failed_boot_and_parameters_written_late(world: World, aws: LocalAws) -> None:
    simulator = aws.simulator
    simulator.fail_next_boots(1)
    carol = await world.launch("carol")
    sim = await simulator.wait_for(carol.instance_id, "failed", 15)
    assert sim.pid is None and not sim.registered
    assert await world.session_refused(carol.instance_id) == "TargetNotConnected"

    # The hub writes (and tags) the parameters around the launch: the bootstrap waits.
    dave = await world.launch("dave", parameters=False)
    for _ in range(200):
        sim = simulator.get(dave.instance_id)
        if sim and sim.detail == "waiting for parameters":
            break
        await asyncio.sleep(0.05)
    assert sim is not None and sim.detail == "waiting for parameters"
    await world.write_parameters("dave", dave.path)
    for _ in range(200):  # it goes on: the notebook starts
        if sim.pid is not None:
            break
        await asyncio.sleep(0.05)
    assert sim.pid is not None
    await world.call(
        "ec2", "terminate_instances", InstanceIds=[carol.instance_id, dave.instance_id]
    )
    await simulator.wait_for(dave.instance_id, "terminated", 15)


async def test_control_routes(aws: LocalAws) -> None:
    control = f"{aws.front_url}/_control"
    settings = await fetch(f"{control}/simulator", method="PUT", body=json.dumps({"bootDelay": 0}))
    assert json.loads(settings.body)["bootDelay"] == 0
    listed = json.loads((await fetch(f"{control}/instances")).body)
    assert listed["bootDelay"] == 0
    assert {"instanceId", "state", "port", "pid", "volumeDir"} <= set(listed["instances"][0])
    marked = await fetch(
        f"{control}/instances/i-0123456789abcdef0/fail-boot", method="POST", body="{}"
    )
    assert json.loads(marked.body)["failBoot"] is True
    aws.simulator.fail_boot("i-0123456789abcdef0", False)
    aws.simulator.boot_delay = 0.2


async def test_ctrl_c_leaves_no_notebook_behind(
    served: tuple[asyncio.subprocess.Process, Path], hub_api: tuple[str, dict[str, str]]
) -> None:
    """``python -m localcloud serve`` with a running notebook, then SIGINT (Ctrl-C)."""
    proc, state = served
    endpoints_file = state / "endpoints.json"
    for _ in range(600):
        if endpoints_file.exists() or proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    endpoints = json.loads(endpoints_file.read_text())["aws"]

    def client(service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=endpoints["endpoint_url"],
            region_name=endpoints["region"],
            aws_access_key_id=endpoints["access_key_id"],
            aws_secret_access_key=endpoints["secret_access_key"],
        )

    other = World(client, CloudIds.from_json(endpoints["resources"]), *hub_api)
    erin = await other.launch("erin")
    instance: dict[str, Any] = {}
    for _ in range(600):
        listed = json.loads((await fetch(f"{endpoints['control_url']}/instances")).body)
        instance = next((i for i in listed["instances"] if i["instanceId"] == erin.instance_id), {})
        if instance.get("agentOnline"):
            break
        await asyncio.sleep(0.05)
    pid = instance["pid"]
    assert pid and alive(pid)
    os.killpg(proc.pid, signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert not alive(pid)
