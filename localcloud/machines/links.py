"""The paths out of a real-boot machine: what EC2's network gives an instance, and no more.

A machine has only its loopback (``--private-network``). What it may reach outside is a Unix
socket in a directory of its own on the host (``LinkDirectory``), bound into the machine at
``INSIDE`` and turned back into the address the instance software expects by a unit of the
local cloud's ("the hypervisor's"), not of the project's user data:

- ``169.254.169.254:80``, the instance metadata service: the link-local address on the
  machine's loopback, and ``socat`` from there to ``imds.sock`` for the machine's own
  processes, ``imds-bridged.sock`` for its containers (a peer on their bridge, one hop
  further: the metadata service applies the instance's hop limit to them), both served on
  the host by the instance's `localcloud.machines.imds.MetadataService`;
- ``https://<service>.<region>.amazonaws.com``, AWS: the machine's ``/etc/hosts`` sends the
  AWS names its software uses to a link-local address on its loopback (``AWS_ADDRESS``, which
  the machine's containers reach through their bridge too), where ``socat`` terminates TLS
  with a certificate of the local cloud's authority (`localcloud.machines.tls`, added to the
  machine's trust store) and passes the plain HTTP on to ``aws.sock``, served on the host by
  the local cloud's AWS front;
- ``https://repo-prod.prod.sagebase.org`` and Synapse's other names, when the local cloud has
  a Synapse stand-in: as AWS's, at ``SYNAPSE_ADDRESS`` and ``synapse.sock``, so that
  synapseclient in a notebook logs in with its default endpoints and no configuration;
- the hub, when the local cloud has one (``HUB_NAME`` at ``HUB_ADDRESS``, the port of the
  hub's own URL): the notebook server calls the hub's API as it would over a VPC, through
  ``hub.sock``, which the host forwards to the hub.

Nothing listens on the host's side for connections *into* the machine: each socket is served
by the host and dialled from inside, as an instance's traffic leaves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_unix_socket

from .imds import MetadataService, metadata_app
from .machine import Bind
from .tls import SYNAPSE_NAMES, Authority

#: Where the link directory appears inside the machine.
INSIDE = "/run/localcloud"
IMDS_ADDRESS = "169.254.169.254"
#: Link-local addresses on the machine's loopback where its links listen, so that the
#: machine's containers reach them too (through their bridge's gateway, the machine): the
#: AWS endpoints' HTTPS and the hub.
AWS_ADDRESS = "169.254.169.250"
HUB_ADDRESS = "169.254.169.251"
SYNAPSE_ADDRESS = "169.254.169.252"
#: The hub's name inside a machine (the hub's ``hub_connect_url`` for real-boot instances).
HUB_NAME = "hub.localcloud.internal"
#: The AWS names the machine resolves to its link: the services instance software calls
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
#: Each metadata connection's socket, by who asks: socat runs it with the peer's address in
#: ``SOCAT_PEERADDR``. The machine's own processes reach 169.254.169.254 from its loopback or
#: that address itself; anything else came in over the containers' bridge.
METADATA_CONNECTION_PATH = "usr/local/lib/localcloud/imds-connection"
METADATA_CONNECTION = f"""\
#!/bin/sh
# The local cloud's instance metadata link, one connection (see localcloud-metadata-link).
case ${{SOCAT_PEERADDR:-}} in
  127.* | {IMDS_ADDRESS}) exec /usr/bin/socat STDIO UNIX-CONNECT:{INSIDE}/imds.sock ;;
  *) exec /usr/bin/socat STDIO UNIX-CONNECT:{INSIDE}/imds-bridged.sock ;;
esac
"""
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
  EXEC:/{METADATA_CONNECTION_PATH}
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""


def tls_link_unit(service: str, address: str, name: str) -> str:
    """The unit of an HTTPS link: ``service``'s names resolve to ``address`` on the
    machine's loopback, where socat ends TLS with ``tls/<name>.pem`` from the link
    directory and passes the plain HTTP to ``<name>.sock``."""
    # one socat address, no spaces (systemd splits a command line at them, continued or not)
    listen = (
        f"OPENSSL-LISTEN:443,bind={address},fork,reuseaddr,verify=0,cert={INSIDE}/tls/{name}.pem"
    )
    return f"""\
# The local cloud's {service}: HTTPS on the loopback, where /etc/hosts sends its names.
[Unit]
Description={service} link (local cloud)
DefaultDependencies=no
Before=network-online.target multi-user.target

[Service]
ExecStartPre=/usr/sbin/ip address replace {address}/32 dev lo
ExecStart=/usr/bin/socat {listen} UNIX-CONNECT:{INSIDE}/{name}.sock
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""


AWS_UNIT_NAME = "localcloud-aws-link.service"
AWS_UNIT = tls_link_unit("AWS endpoints", AWS_ADDRESS, "aws")
SYNAPSE_UNIT_NAME = "localcloud-synapse-link.service"
SYNAPSE_UNIT = tls_link_unit("Synapse", SYNAPSE_ADDRESS, "synapse")
#: podman's drop-in (``containers.conf.d``, read after the root file system's own): every
#: container the machine runs trusts what the machine trusts, as a container on EC2 trusts
#: AWS's and Synapse's public certificates with its image's own store. The SDKs in an image
#: bring their own bundles (botocore's, certifi's), hence the variables; the list replaces
#: podman's default one, whose two entries come first.
CONTAINER_TRUST_NAME = "etc/containers/containers.conf.d/50-localcloud-trust.conf"
CONTAINER_TRUST = f"""\
# Synapse Notebook Hub's local cloud: containers trust the machine's store, which has the
# local cloud's authority (its AWS and Synapse endpoints' certificates).
[containers]
volumes = ["/{TRUST_BUNDLE}:/{TRUST_BUNDLE}:ro"]
env = [
  "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  "TERM=xterm",
  "AWS_CA_BUNDLE=/{TRUST_BUNDLE}",
  "REQUESTS_CA_BUNDLE=/{TRUST_BUNDLE}",
  "SSL_CERT_FILE=/{TRUST_BUNDLE}",
]
"""
HUB_UNIT_NAME = "localcloud-hub-link.service"
HUB_UNIT = """\
# The local cloud's hub, at {name}:{port} for the machine and its containers.
[Unit]
Description=Hub link (local cloud)
DefaultDependencies=no
Before=network-online.target multi-user.target

[Service]
ExecStartPre=/usr/sbin/ip address replace {address}/32 dev lo
ExecStart=/usr/bin/socat TCP-LISTEN:{port},bind={address},fork,reuseaddr \\
  UNIX-CONNECT:{inside}/hub.sock
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
    def bridged_imds_socket(self) -> Path:
        """The metadata service for the machine's containers."""
        return self.path / "imds-bridged.sock"

    @property
    def aws_socket(self) -> Path:
        return self.path / "aws.sock"

    @property
    def hub_socket(self) -> Path:
        return self.path / "hub.sock"

    @property
    def synapse_socket(self) -> Path:
        return self.path / "synapse.sock"

    @property
    def agent_socket(self) -> Path:
        """Where the machine's agent unit connects out to (`localcloud.machines.agent`)."""
        return self.path / "agent.sock"

    def bind(self) -> Bind:
        return Bind(self.path, INSIDE, read_only=True)


async def copy_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction of a link's connection, until its end (then half-closed)."""
    try:
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def serve_forward(socket: Path, host: str, port: int) -> asyncio.AbstractServer:
    """Forward a machine's link socket (owner-only) to ``host:port`` on the host: the hub,
    or the Synapse stand-in (whose TLS the machine's own link unit ends)."""

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hub_reader, hub_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(copy_stream(reader, hub_writer), copy_stream(hub_reader, writer))
        hub_writer.close()
        writer.close()

    socket.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(socket.parent, 0o700)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket)
    server = await asyncio.start_unix_server(forward, path=str(socket))
    os.chmod(socket, 0o600)
    return server


def serve_metadata(service: MetadataService, links: LinkDirectory) -> list[HTTPServer]:
    """Serve the instance's metadata on its link sockets (owner-only: root in the machine):
    to the machine itself, and to its containers one hop further."""
    links.path.mkdir(parents=True, exist_ok=True)
    os.chmod(links.path, 0o700)
    servers = []
    for hops, socket in ((1, links.imds_socket), (2, links.bridged_imds_socket)):
        server = HTTPServer(metadata_app(service, hops))
        server.add_socket(bind_unix_socket(str(socket), mode=0o600))
        servers.append(server)
    return servers


def serve_aws(app: tornado.web.Application, links: LinkDirectory) -> HTTPServer:
    """Serve ``app`` (the AWS front's) on the machine's AWS link socket."""
    links.path.mkdir(parents=True, exist_ok=True)
    os.chmod(links.path, 0o700)
    server = HTTPServer(app)
    server.add_socket(bind_unix_socket(str(links.aws_socket), mode=0o600))
    return server


def install_links(
    upper: Path,
    rootfs: Path,
    links: LinkDirectory,
    authority: Authority,
    region: str,
    *,
    hub_port: int | None = None,
    synapse: bool = False,
) -> None:
    """Prepare a machine's root volume before its first boot (what the hypervisor provides
    is there from the first instant, unlike user data): the link units, enabled (the hub's
    with ``hub_port``, Synapse's with ``synapse``); the AWS names (and the hub's, Synapse's)
    in ``/etc/hosts``; the authority in the trust store, the containers' too; the TLS keys
    and certificates in the link directory."""
    units = upper / "etc/systemd/system"
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    enabled = [(METADATA_UNIT_NAME, METADATA_UNIT), (AWS_UNIT_NAME, AWS_UNIT)]
    if hub_port is not None:
        hub = HUB_UNIT.format(name=HUB_NAME, port=hub_port, address=HUB_ADDRESS, inside=INSIDE)
        enabled.append((HUB_UNIT_NAME, hub))
    if synapse:
        enabled.append((SYNAPSE_UNIT_NAME, SYNAPSE_UNIT))
    connection = upper / METADATA_CONNECTION_PATH
    connection.parent.mkdir(parents=True, exist_ok=True)
    connection.write_text(METADATA_CONNECTION)
    connection.chmod(0o755)
    for name, text in enabled:
        (units / name).write_text(text)
        link = wants / name
        if not link.is_symlink():
            link.symlink_to(f"/etc/systemd/system/{name}")
    hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
    hosts += [f"{AWS_ADDRESS} {name}" for name in aws_hosts(region)]
    if hub_port is not None:
        hosts.append(f"{HUB_ADDRESS} {HUB_NAME}")
    if synapse:
        hosts += [f"{SYNAPSE_ADDRESS} {name}" for name in SYNAPSE_NAMES]
    (upper / "etc/hosts").write_text("\n".join(hosts) + "\n")
    bundle = upper / TRUST_BUNDLE
    bundle.parent.mkdir(parents=True, exist_ok=True)
    system = (rootfs / TRUST_BUNDLE).read_bytes() if (rootfs / TRUST_BUNDLE).exists() else b""
    bundle.write_bytes(system + authority.ca_cert.read_bytes())
    trust = upper / CONTAINER_TRUST_NAME
    trust.parent.mkdir(parents=True, exist_ok=True)
    trust.write_text(CONTAINER_TRUST)
    tls = links.path / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(links.path, 0o700)
    for name, source in (("aws.pem", authority.server_pem), ("synapse.pem", authority.synapse_pem)):
        pem = tls / name
        pem.touch(mode=0o600)
        pem.write_bytes(source.read_bytes())
