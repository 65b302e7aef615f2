"""How often passes may come: a token bucket, so no wake-up source can make them a storm.

A pass runs every loop interval, and sooner when something wakes it (a run ended, a lease went, a
reload). Each pass takes a token; the bucket holds `PASS_BURST` and refills that many per loop
interval. So a few wake-ups in a row pass at once, and whatever keeps waking the loop (a bug, a
failure that wakes a pass which fails again) gets at most `PASS_BURST` passes per interval, plus
the burst: the TinyTask requests of passes are bounded the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Passes that may follow each other at once, and the most per loop interval in the long run.
PASS_BURST = 5


@dataclass
class PassPacer:
    interval_sec: float
    burst: int = PASS_BURST
    #: Tokens left and the monotonic time they were counted at (None: full, nothing taken yet).
    tokens: float = float(PASS_BURST)
    at: float | None = None

    def _refill(self, now: float) -> None:
        if self.at is not None:
            rate = self.burst / self.interval_sec
            self.tokens = min(float(self.burst), self.tokens + (now - self.at) * rate)
        self.at = now

    def wait_sec(self, now: float) -> float:
        """How long the next pass must wait for a token (0: it may run now)."""
        self._refill(now)
        if self.tokens >= 1:
            return 0.0
        return (1 - self.tokens) * self.interval_sec / self.burst

    def take(self, now: float) -> None:
        """A pass runs now."""
        self._refill(now)
        self.tokens = max(0.0, self.tokens - 1)
