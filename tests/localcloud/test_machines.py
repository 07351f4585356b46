"""Real-boot machines (``localcloud.machines``): what an EC2 instance's VM does that the
bootstrap relies on, on a real systemd booted with systemd-nspawn.

- EC2 runs the user data's units at every boot, not only the first (a stopped server's
  instance must start its notebook again): a unit enabled in ``multi-user.target`` runs at
  each boot, each boot has a new boot id, and the root volume (the overlay) keeps what the
  last boot wrote;
- with InstanceInitiatedShutdownBehavior=stop, ``shutdown -h now`` inside is a stop (EC2 User
  Guide, "Change the instance initiated shutdown behavior"): the machine ends with status 0;
  a reboot from inside ends it with systemd-nspawn's reboot status;
- an instance has no inbound path unless a security group opens one: the machine has its own
  network namespace with only a loopback;
- GetConsoleOutput shows the instance's console: the units' lines reach it.

The shared root file system is built once (about 45 s) and cached under ``~/.cache``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import secrets
import subprocess
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from localcloud.aws.front import instance_app
from localcloud.instances.realboot import DEFAULT_CACHE, MachineHost
from localcloud.machines.imds import InstanceIdentity, MetadataService, RoleSession
from localcloud.machines.links import (
    CONTAINER_TRUST_NAME,
    HUB_NAME,
    TRUST_BUNDLE,
    LinkDirectory,
    install_links,
    serve_aws,
    serve_forward,
    serve_metadata,
)
from localcloud.machines.machine import REBOOT_STATUS, Machine, require_tools
from localcloud.machines.rootfs import (
    INSTANCE_PACKAGES,
    RootfsSpec,
    configure,
    ensure_rootfs,
    is_built,
)
from localcloud.machines.seed import seed_user_data
from localcloud.machines.tls import ensure_authority
from localcloud.stack import start_aws
from spawner.bootstrap import BootstrapConfig, bootstrap_failure, render_user_data, server_conf
from spawner.bootstrap.platforms import commands
from spawner.ssm.tunnel import Tunnel
from tests.localcloud.fake_hub import FakeHubApi

BOOT_UNIT = """\
[Unit]
Description=what the bootstrap does at every boot: note this boot

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'cat /proc/sys/kernel/random/boot_id >>/var/lib/boots; echo booted-and-noted'

[Install]
WantedBy=multi-user.target
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rootfs() -> AsyncIterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("real-boot machines need root (overlay mounts and namespaces)")
    require_tools()
    yield await asyncio.to_thread(
        ensure_rootfs, DEFAULT_CACHE, RootfsSpec(packages=INSTANCE_PACKAGES)
    )


def test_the_root_file_system_has_every_command_the_bootstrap_needs(rootfs: Path) -> None:
    """The Debian column of the bootstrap's platform switch (`spawner.bootstrap.platforms`)
    brings every command it names (``docker`` is podman's)."""
    places = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin")
    missing = [
        command
        for command in commands()
        if not any(os.path.lexists(rootfs / place / command) for place in places)
    ]
    assert missing == []
    assert "podman" in (rootfs / "usr/bin/docker").read_text(errors="replace")


def with_boot_unit(machine: Machine) -> Machine:
    """Install the unit in the machine's own root volume, as user data would."""
    units = machine.upper / "etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True, exist_ok=True)
    (units / "note-boot.service").write_text(BOOT_UNIT)
    (units / "multi-user.target.wants/note-boot.service").symlink_to(
        "/etc/systemd/system/note-boot.service"
    )
    return machine


def identity_of(instance_id: str) -> InstanceIdentity:
    return InstanceIdentity(
        instance_id=instance_id,
        region="us-east-1",
        availability_zone="us-east-1a",
        instance_type="t3.large",
        image_id="ami-0123456789abcdef0",
        account_id="123456789012",
    )


def linked_machine(
    rootfs: Path, tmp_path: Path, instance_id: str, *, synapse: bool = False
) -> tuple[Machine, LinkDirectory]:
    """A machine with the local cloud's links prepared in its root volume (not yet served)."""
    links = LinkDirectory(tmp_path / "links")
    machine = Machine(instance_id, rootfs, tmp_path / "m", binds=(links.bind(),))
    authority = ensure_authority(tmp_path / "ca", "us-east-1")
    install_links(machine.upper, rootfs, links, authority, "us-east-1", synapse=synapse)
    return machine, links


async def boots_noted(machine: Machine, count: int) -> list[str]:
    for _ in range(600):  # 60 s: the unit runs once the boot reaches multi-user.target
        ran = await machine.run("cat", "/var/lib/boots")
        lines = ran.stdout.split()
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{count} boots not noted: {ran}")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_unit_runs_at_every_boot_and_the_root_volume_stays(
    rootfs: Path, tmp_path: Path
) -> None:
    machine = with_boot_unit(Machine("i-0aaaaaaaaaaaaaaa1", rootfs, tmp_path / "m"))
    try:
        await machine.boot()
        first = await machine.boot_id()
        assert await boots_noted(machine, 1) == [first]
        assert await machine.poweroff() == 0
        assert not machine.running
        await machine.boot()
        second = await machine.boot_id()
        assert second != first
        noted = await boots_noted(machine, 2)
        assert noted == [first, second]  # the first boot's line is still on the root volume
        assert "booted-and-noted" in machine.console_output()
        assert (machine.upper / "var/lib/boots").read_text().split() == [first, second]
        assert not (rootfs / "var/lib/boots").exists()  # the shared root is never written
    finally:
        await machine.remove()
    assert not machine.dir.exists()


@pytest.mark.asyncio(loop_scope="module")
async def test_shutdown_inside_ends_the_machine_as_a_stop_and_reboot_as_a_reboot(
    rootfs: Path, tmp_path: Path
) -> None:
    machine = Machine("i-0aaaaaaaaaaaaaaa2", rootfs, tmp_path / "m")
    try:
        await machine.boot()
        await machine.run("systemd-run", "--no-block", "shutdown", "-h", "now")
        assert await asyncio.wait_for(machine.wait(), 120) == 0
        await machine.boot()
        await machine.run("systemd-run", "--no-block", "systemctl", "reboot")
        assert await asyncio.wait_for(machine.wait(), 120) == REBOOT_STATUS
    finally:
        await machine.remove()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_machine_has_no_network_but_its_loopback(rootfs: Path, tmp_path: Path) -> None:
    machine = Machine("i-0aaaaaaaaaaaaaaa3", rootfs, tmp_path / "m")
    try:
        await machine.boot()
        ran = await machine.run("cat", "/proc/net/dev")
        interfaces = {line.split(":")[0].strip() for line in ran.stdout.splitlines()[2:]}
        assert interfaces == {"lo"}
    finally:
        await machine.remove()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_machine_reaches_its_metadata_at_the_link_local_address(
    rootfs: Path, tmp_path: Path
) -> None:
    """EC2 User Guide, IMDSv2: a token from ``PUT /latest/api/token``, then GETs with it, at
    169.254.169.254, the way the bootstrap asks (curl); 401 without the token."""
    identity = identity_of("i-0aaaaaaaaaaaaaaa4")
    machine, links = linked_machine(rootfs, tmp_path, identity.instance_id)
    servers = serve_metadata(MetadataService(identity, role_name=None, credentials=None), links)
    imds = "http://169.254.169.254/latest"
    try:
        await machine.boot()
        ran = await machine.run(
            "sh",
            "-c",
            "t=$(curl -fsS --retry 30 --retry-delay 1 --retry-connrefused --max-time 5 -X PUT"
            f" -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' {imds}/api/token)"
            f' && curl -fsS -H "X-aws-ec2-metadata-token: $t" {imds}/meta-data/instance-id',
        )
        assert (ran.status, ran.stdout) == (0, identity.instance_id), ran
        ran = await machine.run(
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{imds}/meta-data/instance-id"
        )
        assert ran.stdout == "401"
        assert oct(links.imds_socket.stat().st_mode & 0o777) == "0o600"
        assert oct(links.bridged_imds_socket.stat().st_mode & 0o777) == "0o600"
    finally:
        await machine.remove()
        for server in servers:
            server.stop()


class Echo(tornado.web.RequestHandler):
    def get(self, path: str) -> None:
        self.finish(f"{self.request.host} /{path}")


@pytest.mark.asyncio(loop_scope="module")
async def test_the_machine_calls_aws_by_its_names_over_https(rootfs: Path, tmp_path: Path) -> None:
    """Instance software calls ``https://<service>.<region>.amazonaws.com`` and checks the
    certificate against the system's trust store: inside the machine those names reach what
    the local cloud serves on the AWS link, over TLS that curl verifies (no ``-k``), with the
    Host header as sent; Synapse's names (synapseclient's default endpoints) reach what the
    Synapse link forwards to on the host the same way; other names do not resolve (the
    machine has no DNS). Containers trust the same store (podman's drop-in)."""
    machine, links = linked_machine(rootfs, tmp_path, "i-0aaaaaaaaaaaaaaa5", synapse=True)
    authority = ensure_authority(tmp_path / "ca", "us-east-1")  # the one the machine trusts
    app = tornado.web.Application([(r"/(.*)", Echo)])
    server = serve_aws(app, links)
    [listening] = bind_sockets(0, "127.0.0.1")
    synapse = HTTPServer(app)
    synapse.add_sockets([listening])
    forward = await serve_forward(links.synapse_socket, "127.0.0.1", listening.getsockname()[1])
    try:
        await machine.boot()
        # podman's drop-in (TOML, as containers.conf); that a container uses it,
        # synapseclient's login in tests/integration/test_real_boot.py shows
        conf = await machine.run("cat", f"/{CONTAINER_TRUST_NAME}")
        trust = tomllib.loads(conf.stdout)["containers"]
        assert "AWS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt" in trust["env"], conf
        assert trust["volumes"] == [f"/{TRUST_BUNDLE}:/{TRUST_BUNDLE}:ro"]
        for host, path in (
            ("ssm.us-east-1.amazonaws.com", "x"),
            ("sts.amazonaws.com", "x"),
            ("repo-prod.prod.sagebase.org", "repo/v1/x"),
            ("www.synapse.org", "x"),
        ):
            ran = await machine.run(
                "curl",
                "-fsS",
                "--max-time",
                "10",
                "--retry",
                "30",
                "--retry-delay",
                "1",
                "--retry-connrefused",
                f"https://{host}/{path}?y=1",
            )
            assert (ran.status, ran.stdout) == (0, f"{host} /{path}"), ran
        ran = await machine.run("curl", "-sS", "--max-time", "5", "https://example.com/")
        assert ran.status != 0
        host_bundle = await asyncio.to_thread(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes)
        assert authority.ca_cert.read_bytes() not in host_bundle  # the host never trusts it
    finally:
        await machine.remove()
        server.stop()
        synapse.stop()
        forward.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_aws_cli_in_the_machine_uses_the_instance_role_through_the_links(
    rootfs: Path, tmp_path: Path
) -> None:
    """The bootstrap's own path, end to end: the AWS CLI in the machine finds no credentials
    but the metadata service's (IMDSv2, the role's credentials from moto's STS), calls
    ``https://ssm.us-east-1.amazonaws.com`` and ``sts`` by their names, and the local cloud's
    AWS front answers from moto: the caller is the assumed role, the parameter the hub wrote
    is read. The machine's link has no ``/_control/`` routes."""
    aws = await start_aws(tmp_path / "cloud", boot_delay=300)
    instance_id = "i-0aaaaaaaaaaaaaaa6"
    machine, links = linked_machine(rootfs, tmp_path, instance_id)
    try:
        iam, sts = aws.client("iam"), aws.client("sts")
        trust = json.dumps(
            {
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "ec2.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ]
            }
        )
        role = (
            await asyncio.to_thread(
                iam.create_role, RoleName="machine-test-role", AssumeRolePolicyDocument=trust
            )
        )["Role"]["Arn"]
        await asyncio.to_thread(
            aws.client("ssm").put_parameter,
            Name="/machine-test/config",
            Value="from-the-hub",
            Type="SecureString",
        )

        async def assume() -> RoleSession:
            answer = await asyncio.to_thread(
                sts.assume_role, RoleArn=role, RoleSessionName=instance_id
            )
            c = answer["Credentials"]
            return RoleSession(
                c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"], c["Expiration"]
            )

        identity = identity_of(instance_id)
        service = MetadataService(identity, role_name="machine-test-role", credentials=assume)
        servers = [*serve_metadata(service, links), serve_aws(instance_app(aws.front), links)]
        try:
            await machine.boot()
            cli = ("aws", "--region", "us-east-1", "--output", "text")
            ran = await machine.run(
                *cli, "sts", "get-caller-identity", "--query", "Arn", timeout=120
            )
            assert ran.status == 0, ran
            assert ran.stdout.strip().endswith(f"assumed-role/machine-test-role/{instance_id}")
            ran = await machine.run(
                *cli,
                "ssm",
                "get-parameter",
                "--name",
                "/machine-test/config",
                "--with-decryption",
                "--query",
                "Parameter.Value",
                timeout=120,
            )
            assert (ran.status, ran.stdout.strip()) == (0, "from-the-hub"), ran
            # the stand-ins' own APIs are not AWS: an instance must not reset or steer them
            ssm_target = "X-Amz-Target: AmazonSSM.StartSession"
            for method, path, header in (
                ("GET", "/moto-api/data.json", ""),
                ("POST", "/moto-api/reset", ""),
                ("POST", "//moto-api/reset", ""),
                ("GET", "/%5Fcontrol/calls", ""),
                ("GET", "/_control/instances", ssm_target),
            ):
                ran = await machine.run(
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "-X",
                    method,
                    *(["-H", header] if header else []),
                    f"https://ec2.us-east-1.amazonaws.com{path}",
                )
                assert ran.stdout == "404", (path, ran)
            ran = await machine.run(*cli, "ssm", "get-parameter", "--name", "/machine-test/config")
            assert ran.status == 0  # nothing was reset
        finally:
            await machine.remove()
            for server in servers:
                server.stop()
    finally:
        await aws.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_cloud_init_runs_the_real_user_data_and_the_bootstrap_runs_at_every_boot(
    rootfs: Path, tmp_path: Path
) -> None:
    """The instance's user data, as the hub renders it, processed by Debian's cloud-init:
    ``server.conf``, the script and the units are written and enabled, the bootstrap unit runs
    at this boot and at the next (here it finds no metadata service, and says so on the
    console, which is what ``GetConsoleOutput`` shows)."""
    config = BootstrapConfig(parameter_path="/notebook-hub/h/alice/_/", region="us-east-1")
    machine = Machine("i-0aaaaaaaaaaaaaaa7", rootfs, tmp_path / "m")
    seed_user_data(machine.upper, machine.name, "ip-10-0-0-7", render_user_data(config).encode())
    failure = "Failed to connect to 169.254.169.254 port 80"
    try:
        await machine.boot()
        ran = await machine.run("cloud-init", "status", "--wait", timeout=180)
        assert "done" in ran.stdout, (ran, machine.console_output())
        ran = await machine.run("cat", "/etc/notebook-hub/server.conf")
        assert ran.stdout == server_conf(config)
        for _ in range(600):
            if failure in machine.console_output():
                break
            await asyncio.sleep(0.1)
        assert failure in machine.console_output(), machine.console_output()[-6000:]
        assert await machine.poweroff() == 0
        await machine.boot()
        for _ in range(600):
            if machine.console_output().split("-- boot 2 of")[-1].count(failure):
                break
            await asyncio.sleep(0.1)
        assert failure in machine.console_output().split("-- boot 2 of")[-1]
    finally:
        await machine.remove()


def test_a_build_is_used_only_once_complete_and_the_root_has_no_login(tmp_path: Path) -> None:
    """A build cut short (no ``.complete``) is never booted; the configured root has an empty
    machine id, a locked root password, and the console forwarding GetConsoleOutput needs."""
    spec = RootfsSpec(packages=("systemd",))
    other = RootfsSpec(packages=("systemd", "podman"))
    assert spec.key() != other.key() and spec.key() == RootfsSpec(packages=("systemd",)).key()
    half = tmp_path / "half"
    (half / "etc").mkdir(parents=True)
    assert not is_built(half)
    (half / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (half / "etc/shadow").write_text("root:*:19000:0:99999:7:::\nnobody:*:19000::::::\n")
    configure(half)
    assert (half / "etc/machine-id").read_text() == ""
    assert (half / "etc/shadow").read_text().startswith("root:!*:19000:")
    assert "ForwardToConsole=yes" in (half / "etc/systemd/journald.conf.d/console.conf").read_text()
    assert (half / "etc/systemd/system/getty.target").readlink() == Path("/dev/null")


async def launch(aws: Any, **extra: Any) -> dict[str, Any]:
    """RunInstances of one t3.large from the local cloud's AMI, in its first subnet."""
    return await asyncio.to_thread(
        aws.client("ec2").run_instances,
        ImageId=aws.ids.ami,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.large",
        SubnetId=aws.ids.subnets[0],
        **extra,
    )


async def console_says(machine: Machine, text: str, *, boot: int = 1) -> bool:
    """Whether the console of boot ``boot`` shows ``text``, waiting up to 120 s for it."""
    for _ in range(1200):
        if text in machine.console_output().split(f"-- boot {boot} of")[-1]:
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.mark.asyncio(loop_scope="module")
async def test_the_simulator_boots_a_machine_per_instance_and_follows_its_life(
    rootfs: Path, tmp_path: Path
) -> None:
    """Real-boot mode (``start_aws(real_boot=True)``): RunInstances through the AWS front
    boots a machine with the instance's user data as the hub renders it; the instance
    profile's role reaches the AWS CLI inside through the metadata service, and the bootstrap
    reads the server's parameters with it (here a config whose image is not an image
    reference, then a parameter missing for good: it gives up and says why on the console,
    GetConsoleOutput); StopInstances
    powers the machine off and StartInstances boots it again (a new boot id, the bootstrap
    again); ``shutdown -h now`` inside stops the instance with EC2's guest-shutdown reason
    ("Client.InstanceInitiatedShutdown", EC2 User Guide: instance-initiated shutdown
    behavior); TerminateInstances removes the machine and its root volume."""
    aws = await start_aws(tmp_path / "cloud", boot_delay=0, real_boot=True)
    simulator, ec2 = aws.simulator, aws.client("ec2")
    assert simulator.machines is not None
    path = "/notebook-hub/h/bob/_/"  # moto's state is the process's: a name of this test's
    community = aws.ids.communities["ad-portal"]
    missing = "config: 'image' is missing or not an image reference"
    launched_at = dt.datetime.now(dt.UTC)
    ssm = aws.client("ssm")
    try:
        for name, value in (("config", '{"image": "not an image!"}'), ("jupyterhub-env", "{}")):
            await asyncio.to_thread(
                ssm.put_parameter, Name=f"{path}{name}", Value=value, Type="SecureString"
            )
        answer = await launch(
            aws,
            UserData=render_user_data(BootstrapConfig(parameter_path=path, region="us-east-1")),
            IamInstanceProfile={"Arn": community.instance_profile_arn},
            BlockDeviceMappings=[
                {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 50, "DeleteOnTermination": True}}
            ],
        )
        iid = answer["Instances"][0]["InstanceId"]
        await simulator.wait_for(iid, "running", within=180)
        machine = simulator.machines.get(iid)
        assert machine is not None and machine.running
        first = await machine.boot_id()
        ran = await machine.run("cloud-init", "status", "--wait", timeout=180)
        assert "done" in ran.stdout, (ran, machine.console_output())
        ran = await machine.run("cat", "/etc/notebook-hub/server.conf")
        assert f"NOTEBOOK_PARAMETER_PATH={path}" in ran.stdout, ran
        # the journal's copy of the message (notebook-bootstrap[pid]: …) reaches the console
        # before die's own line, so wait for the latter: the hub reads only that one
        failed = "notebook-bootstrap: failed at "
        assert await console_says(machine, failed), machine.console_output()
        console = await asyncio.to_thread(ec2.get_console_output, InstanceId=iid, Latest=True)
        assert missing in console["Output"] and console["InstanceId"] == iid
        # the bootstrap's own line there, which the hub reads to fail a start with its reason
        assert bootstrap_failure(console["Output"], launched_at) == missing

        # a parameter missing for good: the bootstrap's unit waits for it (600 s on an
        # instance; no time here, through the manager's environment), then names it
        await asyncio.to_thread(ssm.delete_parameter, Name=f"{path}jupyterhub-env")
        unit = "notebook-bootstrap.service"
        await machine.run("systemctl", "stop", unit)
        await machine.run("systemctl", "set-environment", "NOTEBOOK_PARAMETER_WAIT_SECONDS=0")
        await machine.run("systemctl", "start", "--no-block", unit)
        gone = f"cannot read parameter {path}jupyterhub-env: An error occurred (ParameterNotFound)"
        assert await console_says(machine, gone), machine.console_output()
        console = await asyncio.to_thread(ec2.get_console_output, InstanceId=iid, Latest=True)
        assert (bootstrap_failure(console["Output"], launched_at) or "").startswith(gone)
        await machine.run("systemctl", "unset-environment", "NOTEBOOK_PARAMETER_WAIT_SECONDS")
        await asyncio.to_thread(
            ssm.put_parameter, Name=f"{path}jupyterhub-env", Value="{}", Type="SecureString"
        )
        ran = await machine.run(
            "aws", "--region", "us-east-1", "--output", "text", "sts", "get-caller-identity",
            "--query", "Arn", timeout=120,
        )  # fmt: skip
        assert ran.status == 0, ran
        assert ran.stdout.strip().endswith(f"/{iid}") and ":assumed-role/" in ran.stdout

        # Session Manager reaches the machine's own loopback through its agent, which only
        # ever connected out; nothing listening there is a refused connection, not a hang
        info = await asyncio.to_thread(
            ssm.describe_instance_information,
            Filters=[{"Key": "InstanceIds", "Values": [iid]}],
        )
        assert info["InstanceInformationList"][0]["PingStatus"] == "Online"
        await machine.run(
            "systemd-run", "--unit=probe", "--working-directory=/etc/notebook-hub",
            "python3", "-m", "http.server", "8888", "--bind", "127.0.0.1",
        )  # fmt: skip
        async with Tunnel(iid, 8888, ssm_client=ssm) as tunnel:
            client = AsyncHTTPClient(force_instance=True)
            try:
                body = b""
                for _ in range(600):  # until the server in the machine listens
                    with contextlib.suppress(OSError, HTTPClientError):
                        body = (await client.fetch(f"{tunnel.url}/server.conf")).body
                        break
                    await asyncio.sleep(0.1)
                assert path.encode() in body
            finally:
                client.close()
        async with Tunnel(iid, 9999, ssm_client=ssm) as tunnel:
            reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.local_port)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), 30) == b""
            writer.close()

        await asyncio.to_thread(ec2.stop_instances, InstanceIds=[iid])
        await simulator.wait_for(iid, "stopped", within=180)
        assert not machine.running
        await asyncio.to_thread(ec2.start_instances, InstanceIds=[iid])
        await simulator.wait_for(iid, "running", within=180)
        assert machine.running and await machine.boot_id() != first
        assert await console_says(machine, failed, boot=2)
        assert missing in machine.console_output().split("-- boot 2 of")[-1]

        await machine.run("systemd-run", "--no-block", "shutdown", "-h", "now")
        for _ in range(1200):
            found = await asyncio.to_thread(ec2.describe_instances, InstanceIds=[iid])
            instance = found["Reservations"][0]["Instances"][0]
            if instance["State"]["Name"] == "stopped":
                break
            await asyncio.sleep(0.1)
        assert instance["State"]["Name"] == "stopped"
        assert instance["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
        assert not machine.running

        await asyncio.to_thread(ec2.terminate_instances, InstanceIds=[iid])
        for _ in range(600):
            if not machine.dir.exists():
                break
            await asyncio.sleep(0.1)
        assert not machine.dir.exists() and simulator.machines.get(iid) is None
    finally:
        await aws.close()


#: A token PUT from inside a container, as an SDK makes it (urllib: the image's own Python).
PUT_TOKEN = """
import urllib.request as u
r = u.Request("http://169.254.169.254/latest/api/token", method="PUT",
              headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
try:
    print("token" if len(u.urlopen(r, timeout=8).read()) > 20 else "empty")
except OSError as e:
    print("no answer" if isinstance(getattr(e, "reason", e), TimeoutError) else repr(e))
"""


@pytest.mark.asyncio(loop_scope="module")
async def test_a_container_gets_a_metadata_token_only_within_the_hop_limit(
    rootfs: Path, tmp_path: Path
) -> None:
    """EC2 User Guide, "Configure the instance metadata options": ``HttpPutResponseHopLimit``
    is the token answer's IP TTL, and a container on the instance's bridge is one hop
    further than the instance. With a limit of 1 the machine itself gets a token and a
    container's PUT goes unanswered (a timeout); with 2, which the hub launches with, the
    container gets one too."""
    aws = await start_aws(tmp_path / "cloud", boot_delay=0, real_boot=True)
    simulator, ec2 = aws.simulator, aws.client("ec2")
    assert simulator.machines is not None and simulator.machines.image is not None
    heard: dict[int, str] = {}
    try:
        for limit in (1, 2):
            answer = await launch(
                aws, MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": limit}
            )
            iid = answer["Instances"][0]["InstanceId"]
            await simulator.wait_for(iid, "running", within=180)
            machine = simulator.machines.get(iid)
            assert machine is not None
            ran = await machine.run(
                "curl", "-fsS", "--retry", "30", "--retry-delay", "1", "--retry-connrefused",
                "--max-time", "5", "-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60",
                "http://169.254.169.254/latest/api/token",
            )  # fmt: skip
            assert ran.status == 0 and len(ran.stdout) > 20, ran
            ran = await machine.run(
                "podman", "run", "--rm", simulator.machines.image.name, "python3", "-c",
                PUT_TOKEN, timeout=180,
            )  # fmt: skip
            assert ran.status == 0, ran
            heard[limit] = ran.stdout.strip()
            # one machine at a time (two cores): the next instance boots once this one is gone
            await asyncio.to_thread(ec2.terminate_instances, InstanceIds=[iid])
            for _ in range(1800):
                if simulator.machines.get(iid) is None:
                    break
                await asyncio.sleep(0.1)
        assert heard == {1: "no answer", 2: "token"}
    finally:
        await aws.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_real_bootstrap_runs_the_notebook_image_in_the_machine(
    rootfs: Path, tmp_path: Path
) -> None:
    """The bootstrap, unchanged, in a machine: it reads the server's parameters with the
    instance role, finds its home volume mounted, runs the locally built notebook image with
    its real ``docker run`` line (podman, no registry: the image is in the shared store), and
    the notebook answers through Session Manager and asks its hub who a token belongs to.
    The hub API token is in none of the machine's journal, its root volume, or the home
    volume."""
    tokens: dict[str, str] = {}
    app = tornado.web.Application([(r"/hub/api(.*)", FakeHubApi, {"tokens": tokens})])
    sockets = bind_sockets(0, "127.0.0.1")
    hub = HTTPServer(app)
    hub.add_sockets(sockets)
    hub_port = sockets[0].getsockname()[1]
    aws = await start_aws(
        tmp_path / "cloud", boot_delay=0, real_boot=True, hub_url=f"http://127.0.0.1:{hub_port}"
    )
    simulator, ssm = aws.simulator, aws.client("ssm")
    assert simulator.machines is not None and simulator.machines.image is not None
    path = "/notebook-hub/h/alice/_"
    token = f"hubtoken-{secrets.token_hex(16)}"
    tokens[token] = "alice"
    config = {"image": simulator.machines.image.name, "image_kind": "jupyter", "port": 8888}
    prefix = "/user/alice/"
    env = {
        "JUPYTERHUB_API_TOKEN": token,
        "JUPYTERHUB_API_URL": f"http://{HUB_NAME}:{hub_port}/hub/api",
        "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-alice",
        "JUPYTERHUB_USER": "alice",
        "JUPYTERHUB_SERVER_NAME": "",
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_SERVICE_URL": f"http://0.0.0.0:8888{prefix}",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback",
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES": json.dumps(["access:servers!user=alice"]),
    }
    try:
        for name, value, kind in (
            ("config", json.dumps(config), "String"),
            ("jupyterhub-env", json.dumps(env), "SecureString"),
        ):
            await asyncio.to_thread(
                ssm.put_parameter, Name=f"{path}/{name}", Value=value, Type=kind
            )
        answer = await launch(
            aws,
            UserData=render_user_data(BootstrapConfig(parameter_path=path, region="us-east-1")),
            IamInstanceProfile={"Arn": aws.ids.communities["ad-portal"].instance_profile_arn},
            BlockDeviceMappings=[
                {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 50, "DeleteOnTermination": True}}
            ],
        )
        iid = answer["Instances"][0]["InstanceId"]
        await simulator.wait_for(iid, "running", within=180)
        machine = simulator.machines.get(iid)
        assert machine is not None
        for _ in range(3000):  # until the agent is online (the machine's unit connected)
            if simulator.get(iid) is not None and simulator.get(iid).registered:
                break
            await asyncio.sleep(0.1)
        async with Tunnel(iid, 8888, ssm_client=ssm) as tunnel:
            client = AsyncHTTPClient(force_instance=True)
            version = b""
            try:
                for _ in range(1800):  # the bootstrap, the container, the server's start
                    with contextlib.suppress(OSError, HTTPClientError):
                        version = (await client.fetch(f"{tunnel.url}{prefix}api")).body
                        break
                    await asyncio.sleep(0.1)
            finally:
                client.close()
        assert b'"version"' in version, machine.console_output(4096)
        ran = await machine.run("docker", "ps", "--format", "{{.Names}} {{.Image}}")
        assert ran.stdout.split() == ["notebook", simulator.machines.image.name], ran
        journal = await machine.run("journalctl", "--no-pager", "-o", "cat")
        assert "notebook container started" in journal.stdout
        assert token not in journal.stdout
        home = simulator.get(iid).volume_dir
        assert home is not None and home.stat().st_uid == 1000
        for where in (machine.upper, home):
            found = await asyncio.to_thread(
                subprocess.run, ["grep", "-rl", token, str(where)], capture_output=True
            )
            assert found.stdout == b"", (where, found.stdout)
    finally:
        await aws.close()
        hub.stop()


def test_link_sockets_fit_a_unix_socket_path_however_deep_the_state_dir(tmp_path: Path) -> None:
    """A Unix socket's path has at most 107 bytes (``sun_path``); under pytest-xdist a test's
    state directory alone came close, and a machine's links then could not be served. Each
    local cloud has links of its own."""
    deep = MachineHost(tmp_path / ("d" * 200), "us-east-1").links("i-0123456789abcdef0")
    other = MachineHost(tmp_path / "other", "us-east-1").links("i-0123456789abcdef0")
    for socket_path in (deep.agent_socket, deep.imds_socket, deep.aws_socket, deep.hub_socket):
        assert len(str(socket_path).encode()) <= 107
    assert deep.path != other.path
