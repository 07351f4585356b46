"""Running a deployment shell script against stub commands, for its tests.

The scripts (``spawner/bootstrap/notebook-bootstrap.sh``, ``hub_config/deploy/install-hub.sh``)
define their steps as functions and call ``main`` only when executed; a test sources one,
swaps ``is_block`` for "is a regular file" (no block devices in a scratch root), and runs
``main``. The stubs on ``PATH`` append each call to ``<state>/calls``, one call a line, its
arguments separated by ``\\x1f``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

_PROGRAM = 'source "$1"; is_block() { [[ -f $1 ]]; }; shift; main "$@"'


def run_sourced(
    script: Path, args: tuple[str, ...], env: dict[str, str], state: Path, *, timeout: float
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """``main ARGS`` of ``script`` with ``env``; its result, and the stub calls it made (the
    calls file is emptied for the next run)."""
    result = subprocess.run(
        ["bash", "-c", _PROGRAM, script.stem, str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    calls_file = state / "calls"
    calls = [
        line.split("\x1f")
        for line in (calls_file.read_text().splitlines() if calls_file.exists() else [])
    ]
    calls_file.unlink(missing_ok=True)
    return result, calls
