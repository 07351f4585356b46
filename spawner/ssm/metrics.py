"""Counters of one tunnel, kept as plain integers so the data path pays one addition per event.

The hub exports them to Prometheus by reading the fields (summed over tunnels or labelled by
user); nothing here depends on prometheus_client, so the tunnel stays usable on its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class TunnelMetrics:
    """What an operator needs to tell a healthy tunnel from a flapping or saturated one."""

    #: sessions whose handshake completed (the first one included)
    sessions_opened: int = 0
    #: sessions opened after the first one to recover (not those opened on demand after the
    #: tunnel let an unused one go: ``idle_release``)
    reconnects: int = 0
    #: lost websockets whose session was resumed (ResumeSession): connections kept
    resumes: int = 0
    #: resumes that were refused or timed out (the session was then replaced)
    resume_failures: int = 0
    #: seconds spent resuming, summed over `resumes` (mean = total / resumes) ...
    resume_seconds_total: float = 0.0
    #: ... and the last one's
    last_resume_seconds: float | None = None
    #: sessions currently up (a tunnel spreads its connections over up to ``max_sessions``)
    sessions_open: int = 0
    #: StartSession / websocket / handshake attempts that failed
    session_failures: int = 0
    #: payload bytes read from local connections and sent towards the instance
    bytes_to_remote: int = 0
    #: payload bytes received from the instance and written to local connections
    bytes_from_remote: int = 0
    #: local connections accepted
    connections_accepted: int = 0
    #: local connections reset (session ended under them, connect error, wait timeout)
    connections_reset: int = 0
    #: smux streams (or basic-mode connections) currently open: a gauge
    streams_open: int = 0
    #: how the last session ended (``None`` while the first one is up)
    last_end_reason: str | None = None

    def as_dict(self) -> dict[str, int | float | str | None]:
        return asdict(self)
