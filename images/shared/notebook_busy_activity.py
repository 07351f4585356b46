"""A jupyter-server extension of both notebook images: work in progress is activity, even
when it is silent.

Jupyter Server counts a kernel as active when it sends messages, so a kernel busy for hours
in a silent computation (``time.sleep``, a training loop that prints nothing) looks idle,
and JupyterHub's idle culler stops the server in the middle of it (jupyterhub-idle-culler
#55, #43). The same for a command running in a terminal (a long ``make``, ``Rscript``) that
prints nothing. This extension looks every ``BusyActivity.interval_seconds`` (60 by
default): while any kernel's ``execution_state`` is ``busy`` (Jupyter Server's own record of
its status messages), or any terminal's foreground process is not its shell (the terminal's
process group, as the shell sets it for a running command), it records now as
``busy_last_activity`` in the server's settings, which ``ServerWebApplication.last_activity``
counts (every setting whose name ends in ``_last_activity`` is one of its sources). So the
hub's activity reports (jupyterhub-singleuser) and the instance's backstop (which reads the
same ``/api/status``) see it alike.

SSH sessions with traffic count too, by the rule the hub's relay applies to the same bytes
(``operations.relay.ActivityMeter``), so that the instance's backstop does not stop a server
someone works on over SSH alone (VS Code Remote-SSH): in an interval, the image's sshd
processes read and wrote (``/proc/<pid>/io``: ``rchar`` + ``wchar``, which count socket and
pty traffic) at least ``BusyActivity.ssh_bytes`` (2 KiB: typing, a transfer); an idle
session's keep-alives (about 200 bytes a minute) do not.

An idle kernel, a terminal at its prompt and an open browser tab are not activity here:
nothing is recorded for them, and the idle culler stops the server as before. What the rule
cannot tell from work: a program left open in a terminal (an editor, a pager, a REPL) and a
kernel waiting at ``input()`` count as busy for as long as they stay; a community that wants
a bound sets ``max_age_hours``, which stops a server however busy.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tornado.ioloop import PeriodicCallback

DEFAULT_INTERVAL_SECONDS = 60.0
SETTING = "busy_last_activity"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "notebook_busy_activity"}]


def busy_kernels(kernel_manager: Any) -> list[str]:
    busy = []
    for kernel_id in list(kernel_manager.list_kernel_ids()):
        kernel = kernel_manager.get_kernel(kernel_id)
        if getattr(kernel, "execution_state", None) == "busy":
            busy.append(kernel_id)
    return busy


def busy_terminals(terminal_manager: Any) -> list[str]:
    """Terminals whose foreground process group is not their shell's: a command runs."""
    busy = []
    for name, terminal in list(getattr(terminal_manager, "terminals", {}).items()):
        process = getattr(terminal, "ptyproc", None)
        if process is None or not process.isalive():
            continue
        try:
            foreground = os.tcgetpgrp(process.fd)
        except OSError:
            continue
        if foreground != os.getpgid(process.pid):
            busy.append(name)
    return busy


def _io_bytes(pid: int) -> int:
    """Bytes a process read and wrote through system calls (sockets and ptys included)."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/io").read_text().splitlines()
        )
        return int(fields["rchar"]) + int(fields["wchar"])
    except (OSError, KeyError, ValueError):
        return 0


def sshd_processes(root: int | None = None) -> list[int]:
    """The sshd processes to watch: every one this user can see (in the image's container,
    the server's own), or ``root`` and its descendants (the local cloud's simulated server,
    which shares the host's process table)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "sshd":
                continue
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found.append((int(entry.name), parent))
    if root is None:
        return [pid for pid, _ in found]
    family, changed = {root}, True
    while changed:
        grown = family | {pid for pid, parent in found if parent in family}
        changed, family = grown != family, grown
    return sorted(family)


class SshTraffic:
    """Bytes through the server's sshd since the last look (pids that appear count from
    their first look; a session that ended takes its bytes with it)."""

    def __init__(self, root: int | None = None) -> None:
        self.root, self._seen = root, dict[int, int]()

    def since_last(self) -> int:
        now = {pid: _io_bytes(pid) for pid in sshd_processes(self.root)}
        moved = sum(max(0, n - self._seen.get(pid, n)) for pid, n in now.items())
        self._seen = now
        return moved


def mark(serverapp: Any, ssh: SshTraffic | None = None, ssh_bytes: int = 2048) -> bool:
    """Record activity now if work is in progress; whether it was."""
    settings = serverapp.web_app.settings
    working = bool(
        busy_kernels(serverapp.kernel_manager) or busy_terminals(settings.get("terminal_manager"))
    )
    if ssh is not None and ssh.since_last() >= ssh_bytes:  # looked at every time
        working = True
    if working:
        settings[SETTING] = datetime.now(UTC)
    return working


def _load_jupyter_server_extension(serverapp: Any) -> None:
    options = serverapp.config.get("BusyActivity", {})
    interval = float(options.get("interval_seconds", DEFAULT_INTERVAL_SECONDS))
    root = options.get("sshd_pid")
    ssh = SshTraffic(int(root) if root else None)
    ssh_bytes = int(options.get("ssh_bytes", 2048))
    callback = PeriodicCallback(lambda: mark(serverapp, ssh, ssh_bytes), interval * 1000)
    callback.start()
    serverapp.log.info("notebook_busy_activity: busy kernels and terminals are activity")
