"""``snh``, the console script: the commands of a user's computer start at once, the
operators' commands run as ``python -m operations``.

``snh ssh-proxy`` runs for every SSH connection (``ProxyCommand``: VS Code Remote-SSH opens
several), so it must not pay for what only operators use: the operator commands
(`operations.cli`) import JupyterHub's handlers, boto3 and the communities validator, more
than a second on a laptop. This module imports only the client (`operations.client`) and the
settings; any other command replaces this process with the operator command line, the same
interpreter, the same arguments.
"""

from __future__ import annotations

import os
import sys

from hub_config.settings import OperatorSettings

from . import client


def main() -> int:
    argv = sys.argv[1:]
    if client.handles(argv):
        return client.main(argv, OperatorSettings.from_environ())
    # -P: the current directory is not put on the path (a folder called operations there
    # must not stand in for this package)
    os.execv(sys.executable, [sys.executable, "-P", "-m", "operations", *argv])
    return 1  # not reached: execv replaces the process or raises
