"""Simulated time: a wall clock that runs `speed` times faster than real time."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone


class Clock:
    """Simulated UTC clock.

    With speed 100, 100 simulated seconds pass per real second. `start` sets the simulated time at
    creation (default: the real time now), so a restarted simulator can continue a saved timeline.
    """

    def __init__(self, speed: float = 1.0, start: datetime | None = None):
        if speed <= 0:
            raise ValueError(f"clock speed must be positive, got {speed}")
        self.speed = speed
        self._start_sim = (start or datetime.now(timezone.utc)).astimezone(timezone.utc)
        self._start_real = time.monotonic()
        self._stopped = threading.Event()

    def monotonic(self) -> float:
        """Return the simulated seconds since the clock started."""
        return (time.monotonic() - self._start_real) * self.speed

    def now(self) -> datetime:
        """Return the simulated time, timezone-aware UTC."""
        return self._start_sim + timedelta(seconds=self.monotonic())

    def timestamp(self) -> str:
        """Return the simulated time in RFC 3339 with second precision, as Kubernetes writes it."""
        return self.now().strftime("%Y-%m-%dT%H:%M:%SZ")

    def real_seconds(self, sim_seconds: float) -> float:
        """Convert a simulated duration into the real duration it takes."""
        return sim_seconds / self.speed

    def sleep(self, sim_seconds: float) -> None:
        """Block for `sim_seconds` of simulated time; returns early once `stop()` is called."""
        if sim_seconds > 0:
            self._stopped.wait(self.real_seconds(sim_seconds))

    def advance_to(self, moment: datetime) -> None:
        """Move the clock forward to `moment` if it is behind it; a clock is never moved back."""
        lag = (moment - self.now()).total_seconds()
        if lag > 0:
            self._start_sim += timedelta(seconds=lag)

    def stop(self) -> None:
        """Wake every `sleep` so that threads waiting on the clock can exit."""
        self._stopped.set()
