"""Both images' busy-activity rule (``images/shared/notebook_busy_activity.py``), on its own:
a kernel Jupyter Server records as ``busy`` and a terminal running a command (a real pty
and shell, as terminado runs them) are activity; idle ones are not. The whole path (a silent
busy kernel that the idle culler leaves alone, an idle one it stops) is
``tests/integration/test_culling.py``."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from ptyprocess import PtyProcessUnicode

from localcloud.instances.sshd import SshDaemon, local_user

PATH = Path(__file__).resolve().parent.parent / "images" / "shared" / "notebook_busy_activity.py"
_spec = importlib.util.spec_from_file_location("notebook_busy_activity", PATH)
assert _spec is not None and _spec.loader is not None
busy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(busy)


class Kernels:
    def __init__(self, **states: str) -> None:
        self.kernels = {k: SimpleNamespace(execution_state=s) for k, s in states.items()}

    def list_kernel_ids(self) -> list[str]:
        return list(self.kernels)

    def get_kernel(self, kernel_id: str) -> SimpleNamespace:
        return self.kernels[kernel_id]


def server(kernels: Kernels, terminals: dict | None = None) -> SimpleNamespace:
    settings = {"terminal_manager": SimpleNamespace(terminals=terminals or {})}
    return SimpleNamespace(kernel_manager=kernels, web_app=SimpleNamespace(settings=settings))


def test_a_busy_kernel_is_activity_and_idle_ones_are_not() -> None:
    idle = server(Kernels(a="idle", b="starting"))
    assert not busy.mark(idle) and busy.SETTING not in idle.web_app.settings
    working = server(Kernels(a="idle", b="busy"))
    before = datetime.now(UTC)
    assert busy.mark(working)
    assert working.web_app.settings[busy.SETTING] >= before
    # the server's own rule picks it up: any setting ending in _last_activity is a source
    assert busy.SETTING.endswith("_last_activity")


@pytest.fixture
def shell():
    process = PtyProcessUnicode.spawn(["/bin/bash", "--norc", "-i"])
    yield SimpleNamespace(ptyproc=process)
    process.terminate(force=True)


def wait(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_terminal_is_activity_while_a_command_runs_in_it(shell) -> None:
    terminals = SimpleNamespace(terminals={"1": shell})
    assert wait(lambda: busy.busy_terminals(terminals) == [])  # the prompt: idle
    # a command that ends by itself (not Ctrl-C: a process started where SIGINT is ignored,
    # as background jobs of a shell are, passes that on to its children)
    shell.ptyproc.write("sleep 8\n")
    assert wait(lambda: busy.busy_terminals(terminals) == ["1"])
    assert wait(lambda: busy.busy_terminals(terminals) == [], timeout=60)  # back at the prompt


@pytest.fixture
def key_pair(tmp_path) -> tuple[Path, str]:
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "home").mkdir()
    return key, Path(f"{key}.pub").read_text().strip()


async def test_ssh_traffic_is_activity_and_an_idle_session_is_not(tmp_path, key_pair) -> None:
    """With Debian's real sshd (as the simulated servers run it) and the real ssh client: a
    session that moves a few KiB counts, the same session idle does not."""
    key, public = key_pair
    daemon = await SshDaemon.start(
        home=tmp_path / "home",
        runtime_dir=tmp_path / "run",
        authorized_keys=[public],
        session_env={},
        console=tmp_path / "sshd.log",
    )
    try:
        assert await daemon.wait_listening()
        traffic = busy.SshTraffic(daemon.pid)
        session = await asyncio.create_subprocess_exec(
            "ssh", "-T", "-i", str(key), "-p", str(daemon.port),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            f"{local_user()}@127.0.0.1", "cat",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert session.stdin is not None and session.stdout is not None
        session.stdin.write(b"hello\n")
        assert await asyncio.wait_for(session.stdout.readline(), 30) == b"hello\n"
        traffic.since_last()  # the log-in's own bytes
        assert traffic.since_last() < 2048  # open, idle
        session.stdin.write(b"x" * 8191 + b"\n")
        await asyncio.wait_for(session.stdout.readexactly(8192), 30)
        assert traffic.since_last() >= 2048  # typing, a transfer
        session.stdin.close()
        await asyncio.wait_for(session.wait(), 30)
    finally:
        await daemon.stop()
