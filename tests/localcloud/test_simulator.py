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
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import pytest_asyncio
import tornado.web
from botocore.exceptions import ClientError
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from localcloud.aws.moto_setup import CloudIds
from localcloud.instances.userdata import UserDataError, parse_user_data, read_server_conf
from localcloud.stack import LocalAws, start_aws
from spawner.ssm.tunnel import Tunnel
from tests.localcloud.fake_hub import FakeHubApi

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).resolve().parents[2]
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


# --- idle culling: what counts as activity, and the instance's backstop ------------------------


class ActivityHubApi(FakeHubApi):
    """The fake hub API, which also takes the activity the server reports, as the hub does
    (``POST /hub/api/users/<name>/activity``, ``JUPYTERHUB_ACTIVITY_URL``)."""

    def initialize(  # type: ignore[override]
        self, tokens: dict[str, str], reports: dict[str, list[str]]
    ) -> None:
        super().initialize(tokens)
        self.reports = reports

    def post(self, path: str) -> None:
        user = path.removeprefix("/users/").removesuffix("/activity")
        token = self.request.headers.get("Authorization", "").removeprefix("token ").strip()
        if self.tokens.get(token) != user:
            raise tornado.web.HTTPError(403)
        body = json.loads(self.request.body)
        self.reports.setdefault(user, []).append(body["servers"][""]["last_activity"])
        self.set_status(200)
        self.finish({})


@dataclass
class ActivityWorld(World):
    """Servers that report their activity every second to the fake hub API."""

    reports: dict[str, list[str]] = field(default_factory=dict)

    def hub_env(self, user: str, path: str, token: str) -> dict[str, str]:
        return {
            **super().hub_env(user, path, token),
            "JUPYTERHUB_ACTIVITY_URL": f"{self.hub_url}/hub/api/users/{user}/activity",
            "JUPYTERHUB_ACTIVITY_INTERVAL": "1",
        }

    def reported(self, user: str) -> list[str]:
        return list(self.reports.get(user, []))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def activity_hub() -> AsyncIterator[tuple[str, dict[str, str], dict[str, list[str]]]]:
    tokens: dict[str, str] = {}
    reports: dict[str, list[str]] = {}
    app = tornado.web.Application(
        [(r"/hub/api(.*)", ActivityHubApi, {"tokens": tokens, "reports": reports})]
    )
    sockets = bind_sockets(0, "127.0.0.1")
    hub = HTTPServer(app)
    hub.add_sockets(sockets)
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}", tokens, reports
    hub.stop()


@pytest.fixture
def activity_world(
    aws: LocalAws, activity_hub: tuple[str, dict[str, str], dict[str, list[str]]]
) -> ActivityWorld:
    url, tokens, reports = activity_hub
    return ActivityWorld(aws.client, aws.ids, url, tokens, reports)


async def until(predicate: Callable[[], Any], within: float, what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within}s: {what}")


async def status(base: str, token: str) -> dict[str, Any]:
    answer = await fetch(f"{base}/api/status", token)
    assert answer.code == 200, answer.body
    return json.loads(answer.body)


async def test_rstudio_event_long_polls_are_not_activity(
    activity_world: ActivityWorld, aws: LocalAws
) -> None:
    """An open RStudio tab keeps ``get_events`` pending for ever, through jupyter-server-proxy
    (which records every proxied request as activity): with the RStudio image's filter, the
    activity the server reports to the hub does not move; RStudio's RPC calls move it."""
    world = activity_world
    rita = await world.launch("rita", kind="rstudio")
    sim = await aws.simulator.wait_for(rita.instance_id, "running", 30)
    base = f"http://127.0.0.1:{sim.port}/user/rita"
    await until(lambda: world.reported("rita"), 15, "a first activity report")
    before = (await status(base, rita.token))["last_activity"]

    async def open_tab(polls: int) -> None:
        for _ in range(polls):
            answer = await fetch(
                f"{base}/rstudio/events/get_events", rita.token, method="POST", body="{}"
            )
            assert answer.code == 200 and json.loads(answer.body)["result"]["events"] == []

    await asyncio.gather(open_tab(4), open_tab(4))  # two tabs, about 4 s of polling
    await asyncio.sleep(1.5)  # more than the report interval
    assert (await status(base, rita.token))["last_activity"] == before
    assert max(world.reported("rita")) == before

    typed = await fetch(f"{base}/rstudio/rpc/console_input", rita.token, method="POST", body="{}")
    assert typed.code == 200
    after = (await status(base, rita.token))["last_activity"]
    assert after > before
    await until(lambda: max(world.reported("rita")) >= after, 10, "the new activity reported")

    await world.call("ec2", "terminate_instances", InstanceIds=[rita.instance_id])
    await aws.simulator.wait_for(rita.instance_id, "terminated", 15)


async def test_the_backstop_stops_idle_instances_and_spares_used_ones(
    activity_world: ActivityWorld, aws: LocalAws
) -> None:
    """Three instances, a backstop limit of 3 s: one never used, one whose notebook cannot
    reach its hub (its token is unknown there, so it cannot say how active it is), one in use.
    The first two stop themselves, as a guest ``shutdown -h now`` does; the third runs on."""
    world = activity_world
    simulator = aws.simulator
    simulator.backstop_check_seconds = 0.25
    try:
        unused = await world.launch("uma")
        cut_off = await world.launch("otto")
        world.tokens.pop(cut_off.token)  # its hub no longer knows it
        used = await world.launch("ursula")
        for launch in (unused, cut_off, used):
            await simulator.wait_for(launch.instance_id, "running", 30)
        started = asyncio.get_running_loop().time()
        simulator.backstop_idle_seconds = 3
        base = f"http://127.0.0.1:{simulator.get(used.instance_id).port}/user/ursula"

        async def stopped(launch: Launch) -> dict[str, Any]:
            await simulator.wait_for(launch.instance_id, "stopped", 20)
            answer = await world.call("ec2", "describe_instances", InstanceIds=[launch.instance_id])
            return answer["Reservations"][0]["Instances"][0]

        async def keep_using() -> None:
            while asyncio.get_running_loop().time() - started < 6:
                assert (await fetch(f"{base}/api/contents", used.token)).code == 200
                await asyncio.sleep(0.5)

        results = await asyncio.gather(stopped(unused), stopped(cut_off), keep_using())
        for instance in results[:2]:
            assert instance["State"]["Name"] == "stopped"
            assert instance["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
        assert simulator.get(used.instance_id).phase == "running"  # 6 s, in use
        log = simulator.activity.path.read_text()
        assert f"{unused.instance_id} notebook-backstop: stopping this instance: no notebook " in (
            log
        )
        assert "the notebook answered at" in log
        cut_line = next(
            line
            for line in log.splitlines()
            if f"{cut_off.instance_id} notebook-backstop: stopping" in line
        )
        assert "since the boot" in cut_line and "HTTP 403" in cut_line
        assert used.token not in log and unused.token not in log

        # Left alone, the used one stops too, its limit after its last activity.
        last_use = asyncio.get_running_loop().time()
        await stopped(used)
        assert asyncio.get_running_loop().time() - last_use >= 2.5
        # Stopped is not gone: Start brings the same instance back, its backstop counting
        # afresh from the new boot, with the instance's own limit again (24 h here).
        simulator.backstop_idle_seconds = None
        await world.call("ec2", "start_instances", InstanceIds=[unused.instance_id])
        sim = await simulator.wait_for(unused.instance_id, "running", 30)
        assert sim.boots == 2 and sim.backstop is not None
        assert sim.backstop.limit == 24 * 3600
        assert sim.backstop.last_activity > time.time() - 30  # not the first boot's
    finally:
        simulator.backstop_idle_seconds = None
        simulator.backstop_check_seconds = 60.0
    ids = [unused.instance_id, cut_off.instance_id, used.instance_id]
    await world.call("ec2", "terminate_instances", InstanceIds=ids)
    await simulator.wait_for(unused.instance_id, "terminated", 15)


async def test_the_rstudio_image_enables_the_filter_the_simulator_loads() -> None:
    from localcloud.instances.notebook import ACTIVITY_FILTER, RSTUDIO_IMAGE_DIR, notebook_command

    config = RSTUDIO_IMAGE_DIR / "jupyter_server_config.d" / f"{ACTIVITY_FILTER}.json"
    enabled = json.loads(config.read_text())["ServerApp"]["jpserver_extensions"]
    assert enabled == {ACTIVITY_FILTER: True}
    assert (RSTUDIO_IMAGE_DIR / f"{ACTIVITY_FILTER}.py").is_file()
    command = notebook_command(8888, Path("/tmp"), "rstudio")
    assert f"--ServerApp.jpserver_extensions={ACTIVITY_FILTER}=True" in command
    assert not any(ACTIVITY_FILTER in arg for arg in notebook_command(8888, Path("/"), "jupyter"))
