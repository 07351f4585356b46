"""The notebook image real-boot machines run, built here: no registry is reachable.

``images/local/Dockerfile`` (the same contract as ``images/jupyter``, which
``tests/test_images.py`` checks for both) is built with podman on a Debian base made from the
machines' own suite (``IMAGE_PACKAGES``, by ``localcloud.machines.rootfs``) and imported with
``podman import``. Its build context is ``images/``, for the parts it shares with the other
images (``images/shared``: sshd's configuration and start hook, the busy-activity and
stop-notice extensions). The build runs once per content (``images/local`` and
``images/shared``, the base, the engine's root) in a throwaway systemd-nspawn container over
the machines' root file system, with the host's network for PyPI and the host's trust store
for it (an egress proxy may sign PyPI's certificates), and writes a podman image store in the
cache. Every machine has that store bound read-only as an additional image store
(``rootfs.STORAGE_CONF``): the bootstrap's ``docker image inspect`` finds the image there and
nothing is pulled, and no machine keeps a copy of its 700 MB.

What the build needs that a machine's units may not have: buildah's RUN steps in chroot
isolation (no cgroups to create in nspawn) and the kernel keyring (allowed for this container
only).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .rootfs import (
    BASE_PACKAGES,
    COMPLETE,
    RootfsError,
    RootfsSpec,
    ensure_rootfs,
    locked,
)

REPO = Path(__file__).resolve().parents[2]
#: The build context, and the parts of it the image is made of (the cache key's content).
CONTEXT = REPO / "images"
PARTS = (CONTEXT / "local", CONTEXT / "shared")
IMAGE_NAME = "localhost/snh-notebook"
BASE_NAME = "localhost/snh-debian"
#: The image's base: Python with venv for the pinned packages, sshd for the relay.
IMAGE_PACKAGES = (*BASE_PACKAGES, "ca-certificates", "openssh-server", "python3", "python3-venv")
BUILD_TIMEOUT = 1800.0
#: Bumped when the build command changes, so that an image built before is not used.
BUILD_VERSION = 2
HOST_TRUST = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class BuiltImage:
    """Where the image store is and what the image is called in it."""

    store: Path
    name: str


def _key(base: Path, engine_root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for part in PARTS for p in part.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(CONTEXT).as_posix().encode())
            digest.update(path.read_bytes())
    digest.update(base.name.encode())
    digest.update(engine_root.name.encode())
    digest.update(f"build {BUILD_VERSION}".encode())
    return digest.hexdigest()[:16]


def ensure_image(cache_dir: Path, engine_root: Path) -> BuiltImage:
    """The image store of the current ``images/local`` (building it first if the cache has
    none). ``engine_root``: a machine root file system with podman. Blocking, and slow the
    first time (about 90 s, most of it pip): call it in a thread from async code."""
    base = ensure_rootfs(cache_dir, RootfsSpec(packages=IMAGE_PACKAGES))
    key = _key(base, engine_root)
    store = cache_dir / f"images-{key}"
    image = BuiltImage(store, f"{IMAGE_NAME}:{key}")
    if (store / COMPLETE).is_file():
        return image
    with locked(cache_dir / f"{store.name}.lock"):
        if (store / COMPLETE).is_file():
            return image
        shutil.rmtree(store, ignore_errors=True)
        store.mkdir(parents=True)
        log = cache_dir / f"{store.name}.log"
        with log.open("wb") as out:
            done = subprocess.run(
                _build_command(engine_root, base, store, image.name),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT,
                check=False,
                env=_build_env(),
            )
        if done.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise RootfsError(
                f"building {image.name} failed ({done.returncode}); the end of {log}:\n"
                + "\n".join(tail)
            )
        (store / COMPLETE).write_text(json.dumps({"image": image.name}) + "\n")
    return image


def _build_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TERM")}


def _build_command(engine_root: Path, base: Path, store: Path, name: str) -> list[str]:
    """One throwaway container over the engine's root (a tmpfs overlay keeps it clean): the
    base imported, then ``podman build`` of ``images/local``."""
    script = (
        "set -e; "
        f"tar -C /srv/base --exclude=./{COMPLETE} -c . | "
        f"podman import --quiet - {BASE_NAME}:bookworm >/dev/null; "
        # docker's format: OCI's has no SHELL, and RUN steps would lose bash's pipefail
        "podman build --quiet --format docker --isolation chroot --network host "
        "-v /srv/host-ca.crt:/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt "
        f"--build-arg BASE_IMAGE={BASE_NAME}:bookworm -t {name} "
        "-f /srv/context/local/Dockerfile /srv/context"
    )
    trust = HOST_TRUST if HOST_TRUST.exists() else Path("/dev/null")
    return [
        "systemd-nspawn",
        "--quiet",
        "--register=no",
        "--keep-unit",
        f"--directory={engine_root}",
        "--volatile=overlay",
        "--system-call-filter=add_key keyctl request_key",
        f"--bind={store}:/var/lib/containers/storage",
        f"--bind-ro={base}:/srv/base",
        f"--bind-ro={CONTEXT}:/srv/context",
        f"--bind-ro={trust}:/srv/host-ca.crt",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]
