"""The stand-in's clock: wall time plus an offset that tests can move forward.

Every expiry rule (authorization codes after 60 s, id tokens after 60 s, access tokens after
24 h, refresh tokens unused for 180 days) reads this clock, so a test can age a token by a day
with :meth:`Clock.advance` instead of waiting. Synapse injects its own ``Clock`` into the OIDC
managers for the same reason.
"""

from __future__ import annotations

import time


class Clock:
    """Seconds since the epoch, as ``time.time()`` plus a test-controlled offset."""

    def __init__(self, offset: float = 0.0) -> None:
        self._offset = float(offset)

    def now(self) -> float:
        """Current stand-in time in seconds since the epoch."""
        return time.time() + self._offset

    def now_ms(self) -> int:
        """Current stand-in time in milliseconds (Synapse compares times in milliseconds)."""
        return int(self.now() * 1000)

    def advance(self, seconds: float) -> float:
        """Move the clock forward (never back: tokens must not become valid again)."""
        if seconds < 0:
            raise ValueError("the stand-in clock only moves forward")
        self._offset += seconds
        return self.now()

    @property
    def offset(self) -> float:
        """How far the clock is ahead of wall time, in seconds."""
        return self._offset
