"""The sshd of one simulated instance: Debian's real OpenSSH server, run with the images' own
configuration (``images/shared/sshd_config``), as the image's start hook runs it.

On AWS the container's sshd runs as jovyan, whose home (the passwd entry's) is the home
volume, with the keys the bootstrap mounted from the server's ``config`` parameter. Here it
runs as whoever runs the local cloud, so a few settings differ from the image's, each for a
reason (`SIMULATOR_SETTINGS`): the listening address and port (a free loopback port stands
in for the instance's 2222), the host key and keys file (in the volume's directory and the
boot's runtime directory), ``AllowUsers`` (the local user), ``StrictModes`` (the runtime
directory is under ``/tmp``, which sshd's ownership check refuses), and a ``ForceCommand``
that starts every session in the volume's directory with ``HOME`` there (sshd itself would
use the local user's passwd home), so that what a user sees over SSH is their server's home.
``sftp`` (and ``scp``, which speaks SFTP since OpenSSH 9.0) starts there too.

Sessions get what the image's hook writes (``SetEnv``): the Synapse token's parameter name,
the region, and here also the AWS endpoint and the role's credentials, which a real server's
processes get from IMDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shlex
import signal
import sys
from pathlib import Path

import psutil

from ..ports import free_port
from .notebook import wait_listening

SSHD = Path("/usr/sbin/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
IMAGE_CONFIG = Path(__file__).resolve().parents[2] / "images" / "shared" / "sshd_config"
#: Where the image's hook keeps the host key, relative to the home volume.
HOST_KEY = Path(".ssh") / "notebook_host_ed25519_key"
#: sshd's privilege separation directory, which it needs when started as root (Debian's
#: service makes it at boot: ``RuntimeDirectory=sshd``).
PRIVSEP_DIR = Path("/run/sshd")
#: The environment of SSH sessions, from the notebook's (names, as the image's hook passes).
SESSION_ENV = (
    "SYNAPSE_TOKEN_AWS_SSM_PARAMETER_NAME",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)

_SESSION_SCRIPT = """#!/bin/sh
# The simulated server's session: its home, then what the client asked for.
cd "$HOME" || exit 1
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then
  exec "${SHELL:-/bin/sh}" -c "$SSH_ORIGINAL_COMMAND"
fi
exec "${SHELL:-/bin/sh}" -l
"""


def ensure_privsep_dir() -> None:
    """sshd started as root refuses to run without it (and refuses one others can write)."""
    if os.geteuid() == 0:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)


def local_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def simulator_settings(
    *, port: int, home: Path, runtime_dir: Path, session_env: dict[str, str]
) -> dict[str, str]:
    """The settings that differ from the image's, and why: see the module docstring."""
    env = " ".join(
        f"{name}={session_env[name]}"
        for name in SESSION_ENV
        if session_env.get(name) and not any(c.isspace() or c == '"' for c in session_env[name])
    )
    user = local_user()
    return {
        "Port": str(port),
        "ListenAddress": "127.0.0.1",
        "HostKey": str(home / HOST_KEY),
        "AuthorizedKeysFile": str(runtime_dir / "ssh" / "authorized_keys"),
        "AllowUsers": user,
        "PermitRootLogin": "prohibit-password" if user == "root" else "no",
        "StrictModes": "no",
        "ForceCommand": str(runtime_dir / "ssh" / "session"),
        "Subsystem": f"sftp {SFTP_SERVER} -d {shlex.quote(str(home))}",
        "SetEnv": f"HOME={home} {env}".strip(),
        "Include": "",  # the hook's environment file: SetEnv above has it
    }


def sshd_config(image_config: str, settings: dict[str, str]) -> str:
    """The image's config with ``settings`` in place of its own lines of those keywords
    (added at the end when the image has none); an empty value drops the keyword."""
    lines, done = [], set()
    for line in image_config.splitlines():
        keyword = line.split(" ", 1)[0]
        if keyword in settings and not line.startswith("#"):
            if keyword not in done and settings[keyword]:
                lines.append(f"{keyword} {settings[keyword]}")
            done.add(keyword)
            continue
        lines.append(line)
    lines += [f"{k} {v}" for k, v in settings.items() if k not in done and v]
    return "\n".join(lines) + "\n"


class SshDaemon:
    """One run of the instance's sshd; ``stop`` ends it and every session it started."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc, self.port = proc, port
        self._sessions: list[psutil.Process] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(
        cls,
        *,
        home: Path,
        runtime_dir: Path,
        authorized_keys: list[str],
        session_env: dict[str, str],
        console: Path,
    ) -> SshDaemon:
        """What the image's hook does: the host key on the volume (made at the first
        start), the keys file, then sshd; started even with no key (nobody can log in:
        the refusal is sshd's own, which the tests check)."""
        ensure_privsep_dir()
        ssh_dir = runtime_dir / "ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text("".join(f"{k}\n" for k in authorized_keys))
        session = ssh_dir / "session"
        session.write_text(_SESSION_SCRIPT)
        session.chmod(0o755)
        host_key = home / HOST_KEY
        if not host_key.exists():
            host_key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            keygen = await asyncio.create_subprocess_exec(
                "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "notebook server",
                "-f", str(host_key),
                stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await keygen.wait()
        port = free_port()
        config = ssh_dir / "sshd_config"
        config.write_text(
            sshd_config(
                IMAGE_CONFIG.read_text(),
                simulator_settings(
                    port=port, home=home, runtime_dir=runtime_dir, session_env=session_env
                ),
            )
        )
        config.chmod(0o600)  # it holds the role's credentials (IMDS's, on AWS)
        console.parent.mkdir(parents=True, exist_ok=True)
        with console.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "localcloud.instances.die_with_parent",
                str(os.getpid()),
                str(SSHD),
                "-D",
                "-e",
                "-f",
                str(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(proc, port)

    async def wait_listening(self, within: float = 30.0) -> bool:
        return await wait_listening(self.proc, self.port, within)

    async def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM sshd, then SIGKILL it and its sessions: sshd leaves running sessions
        alone when it stops (so that restarting it does not cut them), but an instance that
        stops ends them all. Sessions are in sessions of their own, so they are found as
        sshd's descendants, before sshd goes."""
        with contextlib.suppress(psutil.Error):
            self._sessions = psutil.Process(self.proc.pid).children(recursive=True)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        for child in self._sessions:
            with contextlib.suppress(psutil.Error):
                child.kill()
        return self.proc.returncode
