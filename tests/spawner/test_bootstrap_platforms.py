"""The bootstrap's one switch between Amazon Linux 2023 and Debian (`spawner.bootstrap.
platforms`): the script asks for the table's commands, the AMI build installs the table's
Amazon Linux packages and checks its commands, and the real-boot machines' root file system
has its Debian packages. That the commands are really there on Debian, the machine tests check
inside the built root file system (``tests/localcloud/test_machines.py``); on Amazon Linux,
``build-ami.sh`` checks them on the builder itself."""

from __future__ import annotations

import re
from pathlib import Path

from localcloud.machines.rootfs import INSTANCE_PACKAGES
from spawner.bootstrap import shipped_script
from spawner.bootstrap.platforms import NEEDS, PLATFORMS, commands, packages

ROOT = Path(__file__).resolve().parents[2]
BUILD_AMI = (ROOT / "images/ami/build-ami.sh").read_text(encoding="utf-8")


def shell_words(text: str, start: str, end: str) -> list[str]:
    """The words between ``start`` and ``end`` in a shell script (line continuations
    joined)."""
    found = re.search(re.escape(start) + r"(.*?)" + re.escape(end), text, re.DOTALL)
    assert found is not None, start
    return found.group(1).replace("\\\n", " ").split()


def test_the_script_requires_the_tables_commands() -> None:
    required = shell_words(shipped_script(), "  for cmd in ", "; do")
    assert tuple(required) == commands(required_only=True)


def test_the_ami_build_installs_and_checks_the_amazon_linux_column() -> None:
    installed = shell_words(BUILD_AMI, "dnf install --assumeyes --quiet ", "\n")
    assert tuple(installed) == packages("al2023", to_install=True) == ("docker", "nvme-cli")
    checked = set(shell_words(BUILD_AMI, "  for cmd in ", "; do"))
    assert set(commands()) <= checked


def test_the_machines_have_the_debian_column() -> None:
    assert set(packages("debian")) <= set(INSTANCE_PACKAGES)
    # the container engine is where the two differ most: Docker Engine, podman as `docker`
    docker = next(need for need in NEEDS if need.command == "docker")
    assert (docker.package("al2023"), docker.package("debian")) == ("docker", "podman-docker")


def test_every_command_has_a_package_on_each_platform() -> None:
    for need in NEEDS:
        for platform in PLATFORMS:
            assert re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", need.package(platform)), need
    assert len({need.command for need in NEEDS}) == len(NEEDS)
