"""The paths out of a real-boot machine: what EC2's network gives an instance, and no more.

A machine has only its loopback (``--private-network``). What it may reach outside is a Unix
socket in a directory of its own on the host (``LinkDirectory``), bound into the machine at
``INSIDE`` and turned back into the address the instance software expects by a unit of the
local cloud's ("the hypervisor's"), not of the project's user data:

- ``169.254.169.254:80``, the instance metadata service: the link-local address on the
  machine's loopback, and ``socat`` from there to ``imds.sock``, served on the host by the
  instance's `localcloud.machines.imds.MetadataService`.

Nothing listens on the host's side for connections *into* the machine: each socket is served
by the host and dialled from inside, as an instance's traffic leaves it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_unix_socket

from .imds import MetadataService, metadata_app
from .machine import Bind

#: Where the link directory appears inside the machine.
INSIDE = "/run/localcloud"
IMDS_ADDRESS = "169.254.169.254"
#: What the machine needs for its links (beyond ``rootfs.BASE_PACKAGES``).
LINK_PACKAGES = ("iproute2", "socat")
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


@dataclass(frozen=True)
class LinkDirectory:
    """One machine's link directory on the host."""

    path: Path

    @property
    def imds_socket(self) -> Path:
        return self.path / "imds.sock"

    def bind(self) -> Bind:
        return Bind(self.path, INSIDE, read_only=True)


def serve_metadata(service: MetadataService, links: LinkDirectory) -> HTTPServer:
    """Serve the instance's metadata on its link socket (owner-only: root in the machine)."""
    links.path.mkdir(parents=True, exist_ok=True)
    os.chmod(links.path, 0o700)
    server = HTTPServer(metadata_app(service))
    server.add_socket(bind_unix_socket(str(links.imds_socket), mode=0o600))
    return server


def install_link_units(upper: Path) -> None:
    """Put the link units in a machine's own root volume, enabled, before its first boot
    (what the hypervisor provides is there from the first instant, unlike user data)."""
    units = upper / "etc/systemd/system"
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (units / METADATA_UNIT_NAME).write_text(METADATA_UNIT)
    link = wants / METADATA_UNIT_NAME
    if not link.is_symlink():
        link.symlink_to(f"/etc/systemd/system/{METADATA_UNIT_NAME}")
