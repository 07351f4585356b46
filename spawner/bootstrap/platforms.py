"""What the bootstrap needs from its machine image, on each platform it runs on.

The bootstrap script is the same bytes everywhere: the user data carries it to every instance.
The machine images under it differ. The notebook AMI is Amazon Linux 2023 with Docker Engine
(``images/ami/build-ami.sh``). The local cloud's real-boot machines are Debian with podman and
its ``docker`` command (``localcloud.machines.rootfs``). The differences are package names,
what the image already has, and the container engine. ``NEEDS`` is the one switch between
them: one row per command the bootstrap or its units call beyond what every system has
(coreutils' ``install`` and ``stat``, ``mount``; ``nvidia-smi`` only on GPU images), with the
package that brings it on each platform. The AMI build installs the Amazon Linux column, the
machines' root file system the Debian one, and tests hold the script, the AMI build and the
root file system to this table (``tests/spawner/test_bootstrap_platforms.py``,
``tests/localcloud/test_machines.py``).

Where the engines differ in behaviour, the bootstrap relies on neither: ``docker run`` with
``--restart unless-stopped`` restarts a crashed notebook on both (podman through conmon); after
a reboot only Docker would start the old container again, but the bootstrap removes it and
runs a new one at every boot anyway. There is no ``docker.service`` under podman: the units
only *want* it, which a missing unit satisfies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Platform = Literal["al2023", "debian"]
PLATFORMS: tuple[Platform, ...] = ("al2023", "debian")


@dataclass(frozen=True)
class Need:
    """A command the bootstrap calls, and where it comes from on each platform."""

    command: str
    #: the package on Amazon Linux 2023, and whether its AMI has it already
    al2023: str
    al2023_preinstalled: bool
    debian: str
    #: checked by the script's ``require_commands`` (``nvme`` only matters on Nitro instances,
    #: ``cloud-init`` and ``shutdown`` are called by the user data and the backstop)
    required: bool = True

    def package(self, platform: Platform) -> str:
        return self.al2023 if platform == "al2023" else self.debian


NEEDS: tuple[Need, ...] = (
    Need("aws", "awscli-2", True, "awscli"),
    Need("curl", "curl-minimal", True, "curl"),
    # Docker Engine; on Debian podman, with the package that installs it as `docker`
    Need("docker", "docker", False, "podman-docker"),
    Need("python3", "python3", True, "python3"),
    Need("blkid", "util-linux", True, "util-linux"),
    Need("findmnt", "util-linux", True, "util-linux"),
    Need("mountpoint", "util-linux", True, "util-linux"),
    Need("mkfs.ext4", "e2fsprogs", True, "e2fsprogs"),
    Need("resize2fs", "e2fsprogs", True, "e2fsprogs"),
    Need("nvme", "nvme-cli", False, "nvme-cli", required=False),
    Need("cloud-init", "cloud-init", True, "cloud-init", required=False),
    Need("shutdown", "systemd", True, "systemd-sysv", required=False),
)


def packages(platform: Platform, *, to_install: bool = False) -> tuple[str, ...]:
    """The packages that bring every command of ``NEEDS`` on ``platform`` (``to_install``:
    only those its base image lacks), in the table's order, each once."""
    chosen = [
        need.package(platform)
        for need in NEEDS
        if not (to_install and platform == "al2023" and need.al2023_preinstalled)
    ]
    return tuple(dict.fromkeys(chosen))


def commands(*, required_only: bool = False) -> tuple[str, ...]:
    return tuple(need.command for need in NEEDS if need.required or not required_only)
