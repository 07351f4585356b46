"""The paths out of a real-boot machine: what EC2's network gives an instance, and no more.

A machine has only its loopback (``--private-network``). What it may reach outside is a Unix
socket in a directory of its own on the host (``LinkDirectory``), bound into the machine at
``INSIDE`` and turned back into the address the instance software expects by a unit of the
local cloud's ("the hypervisor's"), not of the project's user data:

- ``169.254.169.254:80``, the instance metadata service: the link-local address on the
  machine's loopback, and ``socat`` from there to ``imds.sock``, served on the host by the
  instance's `localcloud.machines.imds.MetadataService`;
- ``https://<service>.<region>.amazonaws.com``, AWS: the machine's ``/etc/hosts`` sends the
  AWS names its software uses to its loopback, where ``socat`` terminates TLS with a
  certificate of the local cloud's authority (`localcloud.machines.tls`, added to the
  machine's trust store) and passes the plain HTTP on to ``aws.sock``, served on the host by
  the local cloud's AWS front.

Nothing listens on the host's side for connections *into* the machine: each socket is served
by the host and dialled from inside, as an instance's traffic leaves it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_unix_socket

from .imds import MetadataService, metadata_app
from .machine import Bind
from .tls import Authority

#: Where the link directory appears inside the machine.
INSIDE = "/run/localcloud"
IMDS_ADDRESS = "169.254.169.254"
#: The AWS names the machine resolves to its loopback: the services instance software calls
#: (the bootstrap: ssm; the SSM agent: ssm, ssmmessages, ec2messages; SDKs: sts, and the
#: rest a notebook may use), regional and, for the global ones, global.
REGIONAL_SERVICES = (
    "ec2",
    "ec2messages",
    "ecr",
    "kms",
    "logs",
    "s3",
    "secretsmanager",
    "ssm",
    "ssmmessages",
    "sts",
)
GLOBAL_NAMES = ("sts.amazonaws.com", "iam.amazonaws.com")
TRUST_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
METADATA_UNIT_NAME = "localcloud-metadata-link.service"
METADATA_UNIT = f"""\
# The local cloud's EC2: the instance metadata service at {IMDS_ADDRESS}, as on an instance.
[Unit]
Description=Instance metadata service link (local cloud)
DefaultDependencies=no
After=systemd-sysctl.service
Before=network-online.target multi-user.target

[Service]
ExecStartPre=/usr/sbin/ip address replace {IMDS_ADDRESS}/32 dev lo
ExecStart=/usr/bin/socat TCP-LISTEN:80,bind={IMDS_ADDRESS},fork,reuseaddr \\
  UNIX-CONNECT:{INSIDE}/imds.sock
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""
AWS_UNIT_NAME = "localcloud-aws-link.service"
#: One socat address, no spaces (systemd splits a command line at them, continued or not).
TLS_LISTEN = f"OPENSSL-LISTEN:443,bind=127.0.0.1,fork,reuseaddr,verify=0,cert={INSIDE}/tls/aws.pem"
AWS_UNIT = f"""\
# The local cloud's AWS endpoints: HTTPS on the loopback, where /etc/hosts sends AWS's names.
[Unit]
Description=AWS endpoints link (local cloud)
DefaultDependencies=no
Before=network-online.target multi-user.target

[Service]
ExecStart=/usr/bin/socat {TLS_LISTEN} UNIX-CONNECT:{INSIDE}/aws.sock
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""


def aws_hosts(region: str) -> list[str]:
    return [f"{s}.{region}.amazonaws.com" for s in REGIONAL_SERVICES] + list(GLOBAL_NAMES)


@dataclass(frozen=True)
class LinkDirectory:
    """One machine's link directory on the host."""

    path: Path

    @property
    def imds_socket(self) -> Path:
        return self.path / "imds.sock"

    @property
    def aws_socket(self) -> Path:
        return self.path / "aws.sock"

    @property
    def agent_socket(self) -> Path:
        """Where the machine's agent unit connects out to (`localcloud.machines.agent`)."""
        return self.path / "agent.sock"

    def bind(self) -> Bind:
        return Bind(self.path, INSIDE, read_only=True)


def serve_metadata(service: MetadataService, links: LinkDirectory) -> HTTPServer:
    """Serve the instance's metadata on its link socket (owner-only: root in the machine)."""
    links.path.mkdir(parents=True, exist_ok=True)
    os.chmod(links.path, 0o700)
    server = HTTPServer(metadata_app(service))
    server.add_socket(bind_unix_socket(str(links.imds_socket), mode=0o600))
    return server


def serve_aws(app: tornado.web.Application, links: LinkDirectory) -> HTTPServer:
    """Serve ``app`` (the AWS front's) on the machine's AWS link socket."""
    links.path.mkdir(parents=True, exist_ok=True)
    os.chmod(links.path, 0o700)
    server = HTTPServer(app)
    server.add_socket(bind_unix_socket(str(links.aws_socket), mode=0o600))
    return server


def install_links(
    upper: Path, rootfs: Path, links: LinkDirectory, authority: Authority, region: str
) -> None:
    """Prepare a machine's root volume before its first boot (what the hypervisor provides
    is there from the first instant, unlike user data): the link units, enabled; the AWS
    names in ``/etc/hosts``; the authority in the trust store; the TLS key and certificate in
    the link directory."""
    units = upper / "etc/systemd/system"
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for name, text in ((METADATA_UNIT_NAME, METADATA_UNIT), (AWS_UNIT_NAME, AWS_UNIT)):
        (units / name).write_text(text)
        link = wants / name
        if not link.is_symlink():
            link.symlink_to(f"/etc/systemd/system/{name}")
    hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    hosts += [f"127.0.0.1 {name}" for name in aws_hosts(region)]
    (upper / "etc/hosts").write_text("\n".join(hosts) + "\n")
    bundle = upper / TRUST_BUNDLE
    bundle.parent.mkdir(parents=True, exist_ok=True)
    system = (rootfs / TRUST_BUNDLE).read_bytes() if (rootfs / TRUST_BUNDLE).exists() else b""
    bundle.write_bytes(system + authority.ca_cert.read_bytes())
    tls = links.path / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(links.path, 0o700)
    pem = tls / "aws.pem"
    pem.touch(mode=0o600)
    pem.write_bytes(authority.server_pem.read_bytes())
