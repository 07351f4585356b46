"""``python -m localcloud.instances.die_with_parent PARENT_PID PROGRAM ARGS...``: exec PROGRAM
so that it is killed when the local cloud (process PARENT_PID) dies.

The simulator stops its notebook processes itself on stop, terminate and Ctrl-C; this guards
the case it cannot handle, the local cloud being killed outright (SIGKILL, a crash): Linux's
parent-death signal (``prctl(PR_SET_PDEATHSIG)``) survives ``execve`` and fires when the
thread that started the process exits, so no notebook outlives the local cloud. Elsewhere
PROGRAM is simply exec'd.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def _set_parent_death_signal(parent: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl: then nobody would ever send the signal.
    if os.getppid() != parent:
        os._exit(1)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    _set_parent_death_signal(int(argv[0]))
    os.execv(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
