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

An idle kernel, a terminal at its prompt and an open browser tab are not activity here:
nothing is recorded for them, and the idle culler stops the server as before. What the rule
cannot tell from work: a program left open in a terminal (an editor, a pager, a REPL) and a
kernel waiting at ``input()`` count as busy for as long as they stay; a community that wants
a bound sets ``max_age_hours``, which stops a server however busy.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
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


def mark(serverapp: Any) -> bool:
    """Record activity now if work is in progress; whether it was."""
    settings = serverapp.web_app.settings
    working = busy_kernels(serverapp.kernel_manager) or busy_terminals(
        settings.get("terminal_manager")
    )
    if working:
        settings[SETTING] = datetime.now(UTC)
    return bool(working)


def _load_jupyter_server_extension(serverapp: Any) -> None:
    options = serverapp.config.get("BusyActivity", {})
    interval = float(options.get("interval_seconds", DEFAULT_INTERVAL_SECONDS))
    callback = PeriodicCallback(lambda: mark(serverapp), interval * 1000)
    callback.start()
    serverapp.log.info("notebook_busy_activity: busy kernels and terminals are activity")
