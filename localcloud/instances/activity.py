"""``.localcloud/instances.log``: one line per thing the simulator does to an instance.

What an operator would read in an instance's console and the bootstrap's journal, condensed:
when it booted, what it read (names, counts — never a parameter or environment value), which
process serves it on which port, when the agent came online, what stopped it. Tests read the
file to check that no secret reaches it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

log = logging.getLogger("localcloud.instances.simulator")


class ActivityLog:
    """Appends ``<UTC time> <instance id> <message>`` lines (and logs them at INFO)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, instance_id: str, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        line = f"{stamp}Z {instance_id} {message}"
        log.info("%s %s", instance_id, message)
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")

    def lines(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
