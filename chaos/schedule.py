"""The fault schedule of a chaos run: what goes wrong, and when, from one seed.

Pure: the same seed and duration give the same schedule, which the run prints first, so a
failure can be replayed (``make chaos SEED=<n>``). Faults land in the first three quarters of
the run; the last quarter is for recovery. Each kind is what a hub on AWS lives through:

- ``hub_kill``: SIGKILL of the hub (a crash, an OOM kill, a host reboot), three times, at
  least `HUB_KILL_GAP` apart so each restart completes before the next;
- ``aws_throttle``: a burst of ``RequestLimitExceeded`` on the calls the hub makes most;
- ``channel_cut``: a Session Manager websocket dropped (the hub resumes the session);
- ``agent_restart``: the SSM agent of one instance restarts (its sessions end abruptly);
- ``synapse_outage``: every Synapse endpoint answers 503 for ``seconds``;
- ``reboot``: one instance rebooted from the console;
- ``stop_behind``: one instance stopped from the console, behind the hub's back.

``InsufficientInstanceCapacity`` in one subnet is not scheduled: it holds for the whole run,
so every launch meets it (`chaos.run`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Seconds between hub kills: a restart, its proxy check and the tunnels' reopening.
HUB_KILL_GAP = 25.0

#: How many of each kind a run has.
COUNTS = {
    "hub_kill": 3,
    "aws_throttle": 3,
    "channel_cut": 4,
    "agent_restart": 1,
    "synapse_outage": 1,
    "reboot": 1,
    "stop_behind": 1,
}


@dataclass(frozen=True)
class Fault:
    at: float  # seconds from the start of the workload
    kind: str
    seconds: float = 0.0  # how long it lasts (synapse_outage)
    pick: int = 0  # which user's server or session it hits (an index, taken modulo)

    def __str__(self) -> str:
        lasting = f" for {self.seconds:.0f}s" if self.seconds else ""
        return f"t=+{self.at:6.1f}s  {self.kind}{lasting}  (pick {self.pick})"


def schedule(seed: int, duration: float, *, outage: float) -> list[Fault]:
    """The faults of a run of ``duration`` seconds, in time order. ``outage``: how long the
    Synapse outage lasts (120 s in the full run)."""
    if duration < 4 * HUB_KILL_GAP:
        raise ValueError(f"a run needs at least {4 * HUB_KILL_GAP:.0f} s for its hub kills")
    rng = random.Random(seed)
    start, end = 0.1 * duration, 0.75 * duration
    faults: list[Fault] = []
    # hub kills: one in each third of the window, kept HUB_KILL_GAP apart
    third = (end - start) / 3
    at = start
    for i in range(COUNTS["hub_kill"]):
        low = max(start + i * third, at + (HUB_KILL_GAP if i else 0.0))
        at = rng.uniform(low, max(low, start + (i + 1) * third - HUB_KILL_GAP / 2))
        faults.append(Fault(round(at, 1), "hub_kill"))
    for kind, count in COUNTS.items():
        if kind == "hub_kill":
            continue
        for _ in range(count):
            if kind == "synapse_outage":
                at = rng.uniform(start, max(start, end - outage))
                faults.append(Fault(round(at, 1), kind, seconds=outage))
            else:
                faults.append(
                    Fault(round(rng.uniform(start, end), 1), kind, pick=rng.randrange(10**6))
                )
    return sorted(faults, key=lambda f: (f.at, f.kind))
