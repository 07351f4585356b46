"""A user's computer for the SSH tests and the relay benchmark: a key pair, ``snh`` logged
in to the hub (``snh login``, ``snh ssh-config``: the README's commands), an
``~/.ssh/config``, and Debian's OpenSSH client; and the hub's SSH keys page, used as a
browser uses it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests

from localcloud.instances.sshd import local_user

from .harness import FormParser

BIN = Path(sys.executable).parent


def add_key(hub, session: requests.Session, line: str) -> requests.Response:
    """Through the SSH keys page, as a browser submits its form (with its XSRF field)."""
    page = session.get(f"{hub.url}/hub/ssh-keys", timeout=30)
    assert page.status_code == 200, page.text[:300]
    form = FormParser()
    form.feed(page.text[page.text.index('id="snh-ssh-key-add"') - 200 :])
    return session.post(
        f"{hub.url}/hub/ssh-keys",
        data={"_xsrf": form.fields["_xsrf"], "action": "add", "key": line},
        timeout=30,
    )


class Laptop:
    """A user's computer: a key pair, ``snh`` logged in to the hub, an ``~/.ssh/config``."""

    def __init__(self, home: Path, hub, user: str, token: str) -> None:
        self.home, self.user = home, user
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        self.key = home / ".ssh" / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{user}@laptop",
             "-f", str(self.key)],
            check=True,
        )  # fmt: skip
        self.env = {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "LANG": "C.UTF-8",
        }
        token_file = home / "token"
        token_file.write_text(token)
        self.snh("login", "--hub", hub.url, "--token-file", str(token_file))
        block = self.snh("ssh-config", "--ssh-user", local_user())
        self.config = home / ".ssh" / "config"
        self.config.write_text(
            block + f"    IdentityFile {self.key}\n"
            "    IdentitiesOnly yes\n"
            "    BatchMode yes\n"
            "    StrictHostKeyChecking accept-new\n"
            f"    UserKnownHostsFile {home / '.ssh' / 'known_hosts'}\n"
            "    LogLevel ERROR\n"
        )
        self.alias = f"snh-{user}"

    @property
    def public_key(self) -> str:
        return Path(f"{self.key}.pub").read_text().strip()

    def snh(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "snh"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def run(self, program: str, *args: str, timeout: float = 180, **kwargs):
        return subprocess.run(
            [program, "-F", str(self.config), *args],
            env=self.env,
            capture_output=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )

    def ssh(self, command: str, *options: str, timeout: float = 180):
        return self.run("ssh", *options, self.alias, command, timeout=timeout)
