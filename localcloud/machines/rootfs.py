"""The root file system every real-boot machine shares: Debian, built once, cached.

EC2 boots an instance from its AMI's snapshot; here every machine boots from one Debian root
file system made with ``debootstrap`` (``--variant=minbase`` plus systemd; the spec's other
packages then with ``apt-get`` inside it), with an overlay of
its own on top (``localcloud.machines.machine``), as every instance has a root volume of its
own made from the same snapshot. Building it takes about 45 s and 240 MB, so it is built once
per spec and kept in a cache directory: the directory's name is the spec's hash, and a
``.complete`` file inside says that the build finished (a build cut short is started again,
never used). Concurrent builders (two test workers) wait for one another on a lock file.

What is changed after ``debootstrap``, and why:

- journald forwards every line to the console (``ForwardToConsole``): the machine's console
  is what ``GetConsoleOutput`` answers, and a bootstrap that fails must show why there as on
  EC2, where cloud-init and the units log to the serial console;
- ``/etc/machine-id`` is emptied: each machine gets its own at its first boot (kept in its
  overlay, so it stays the same across its stops and starts, like an instance's);
- the root password is locked and ``getty`` units are masked: nothing logs in on a console;
- cloud-init, when installed, reads its NoCloud seed only (``CLOUD_INIT_CONFIG``);
- podman, when installed, runs without cgroups or keyrings, which a machine cannot give it
  (``CONTAINERS_CONF``), and finds locally built images in a shared store (``STORAGE_CONF``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spawner.bootstrap.platforms import packages

#: The packages a machine needs to boot and run units.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus")
#: An instance's: what the notebook AMI brings for the bootstrap, in Debian's packages (the
#: bootstrap's platform switch, `spawner.bootstrap.platforms`: podman as its ``docker``), and
#: what the local cloud's links use (``iproute2``, ``socat``, ``ca-certificates``;
#: ``localcloud.machines.links``).
INSTANCE_PACKAGES = tuple(
    dict.fromkeys(
        (*BASE_PACKAGES, *packages("debian"), "ca-certificates", "iproute2", "podman", "socat")
    )
)
#: Bumped when ``configure`` changes, so that a cached build made before is not used.
CONFIGURE_VERSION = 3
#: The container engine inside a machine (``../shared/real-boot-notes.md``): no cgroups (the
#: cgroup v1 controllers are read-only in nspawn), no session keyring (nspawn's seccomp
#: filter refuses it to units), events to a file (a unit may run before journald's socket).
CONTAINERS_CONF = """\
# Synapse Notebook Hub's local cloud: podman inside a systemd-nspawn machine.
[containers]
cgroups = "disabled"
keyring = false

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
#: Where the machine's own containers live (a plain directory bound in: podman's overlay
#: driver cannot sit on the machine's overlay root) and where the shared, read-only store of
#: locally built images is bound (``localcloud.machines.image``): found there, an image is
#: not pulled.
IMAGE_STORE = "/var/lib/snh-images"
STORAGE_CONF = f"""\
# Synapse Notebook Hub's local cloud: images built on the host, shared read-only.
[storage]
driver = "overlay"
graphroot = "/var/lib/containers/storage"
runroot = "/run/containers/storage"

[storage.options]
additionalimagestores = ["{IMAGE_STORE}"]
"""
#: cloud-init: the user data comes from the NoCloud seed the local cloud writes
#: (``localcloud.machines.seed``: its EC2 data source tells EC2 from DMI, which it does not
#: read in a container); no locale of its own (en_US is not generated in a minimal system).
CLOUD_INIT_CONFIG = """\
# Synapse Notebook Hub's local cloud
datasource_list: [ NoCloud ]
locale: C.UTF-8
"""
COMPLETE = ".complete"
BUILD_TIMEOUT = 1800.0
JOURNALD_CONSOLE = """\
# Synapse Notebook Hub's local cloud: the console is what GetConsoleOutput shows.
[Journal]
ForwardToConsole=yes
MaxLevelConsole=info
"""


class RootfsError(Exception):
    """The root file system could not be built (the message has debootstrap's last lines)."""


@dataclass(frozen=True)
class RootfsSpec:
    """What to build: a Debian suite from a mirror, with packages beyond ``minbase``."""

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    packages: tuple[str, ...] = field(default=BASE_PACKAGES)

    def key(self) -> str:
        """A name for the build: the same spec is the same directory."""
        text = json.dumps({**asdict(self), "configure": CONFIGURE_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def debootstrap_args(self, target: Path) -> list[str]:
        """The base system; debootstrap's ``--include`` cannot resolve virtual packages
        (``python3-cryptography`` needs one), so only the base packages go there."""
        return [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(sorted(set(BASE_PACKAGES) & set(self.packages)))}",
            self.suite,
            str(target),
            self.mirror,
        ]

    def extra_packages(self) -> list[str]:
        """Installed with apt inside the new system, after debootstrap."""
        return sorted(set(self.packages) - set(BASE_PACKAGES))


def rootfs_path(cache_dir: Path, spec: RootfsSpec) -> Path:
    return cache_dir / f"rootfs-{spec.suite}-{spec.key()}"


def is_built(path: Path) -> bool:
    return (path / COMPLETE).is_file()


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """One builder at a time (test workers share the cache)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_rootfs(cache_dir: Path, spec: RootfsSpec | None = None) -> Path:
    """The built root file system of ``spec`` (building it first if the cache has none).

    Blocking, and slow the first time: call it in a thread from async code."""
    spec = spec or RootfsSpec()
    target = rootfs_path(cache_dir, spec)
    if is_built(target):
        return target
    with locked(cache_dir / f"{target.name}.lock"):
        if is_built(target):  # another builder finished while we waited
            return target
        building = cache_dir / f"{target.name}.building"
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        log = cache_dir / f"{target.name}.log"
        steps = [("debootstrap", spec.debootstrap_args(building))]
        if spec.extra_packages():
            # apt inside the new system (nspawn gives it /proc, /dev and the host's network)
            inside = [
                "systemd-nspawn",
                "--quiet",
                "--register=no",
                "--keep-unit",
                f"--directory={building}",
                "--setenv=DEBIAN_FRONTEND=noninteractive",
            ]
            steps += [
                ("apt-get update", [*inside, "apt-get", "update", "-q"]),
                (
                    "apt-get install",
                    [
                        *inside,
                        "apt-get",
                        "install",
                        "-y",
                        "-q",
                        "--no-install-recommends",
                        *spec.extra_packages(),
                    ],
                ),
                ("apt-get clean", [*inside, "apt-get", "clean"]),
            ]
        with log.open("wb") as out:
            for what, command in steps:
                _run_step(what, command, out, log, spec)
        configure(building)
        (building / COMPLETE).write_text(json.dumps(asdict(spec), sort_keys=True) + "\n")
        building.rename(target)
    return target


def _run_step(what: str, command: list[str], out: Any, log: Path, spec: RootfsSpec) -> None:
    try:
        done = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RootfsError(f"{what} could not run: {exc}") from exc
    if done.returncode != 0:
        out.flush()
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RootfsError(
            f"{what} for {spec.suite} from {spec.mirror} failed ({done.returncode}); "
            f"the end of {log}:\n" + "\n".join(tail)
        )


def configure(root: Path) -> None:
    """The changes made after ``debootstrap`` (the module docstring says why)."""
    journald = root / "etc/systemd/journald.conf.d"
    journald.mkdir(parents=True, exist_ok=True)
    (journald / "console.conf").write_text(JOURNALD_CONSOLE)
    (root / "etc/machine-id").write_text("")
    with contextlib.suppress(FileNotFoundError):
        (root / "var/lib/dbus/machine-id").unlink()
    shadow = root / "etc/shadow"
    lines = shadow.read_text().splitlines()
    shadow.write_text(
        "\n".join(
            ("root:!*:" + line.split(":", 2)[2]) if line.startswith("root:") else line
            for line in lines
        )
        + "\n"
    )
    masked = root / "etc/systemd/system"
    masked.mkdir(parents=True, exist_ok=True)
    if (root / "etc/cloud").is_dir():
        (root / "etc/cloud/cloud.cfg.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/cloud/cloud.cfg.d/90-localcloud.cfg").write_text(CLOUD_INIT_CONFIG)
    for unit in ("getty.target", "console-getty.service", "systemd-firstboot.service"):
        link = masked / unit
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/dev/null")
    if (root / "usr/bin/podman").exists():
        containers = root / "etc/containers"
        containers.mkdir(parents=True, exist_ok=True)
        (containers / "containers.conf").write_text(CONTAINERS_CONF)
        (containers / "storage.conf").write_text(STORAGE_CONF)
        (containers / "nodocker").write_text("")  # podman-docker: no notice on every call
        (root / IMAGE_STORE.lstrip("/")).mkdir(parents=True, exist_ok=True)
