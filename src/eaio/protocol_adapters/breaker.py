"""The circuit breaker every adapter puts in front of a device: a dead device costs one timeout
per poll, not one per request."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures; after ``reset_s`` lets one trial through
    (half-open): success closes it, failure opens it again.

    A dozen lines rather than aiobreaker 1.2: aiobreaker mixes naive UTC and local time
    (``time_until_open`` raises TypeError east of UTC), never reports half-open, uses the wall
    clock, and re-raises the tripping failure as its own error, hiding timeout vs offline.
    """

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures, self.reset_s, self._clock = failures, reset_s, clock
        self.count = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self.reset_s else "open"

    def retry_in(self) -> float:
        """Seconds until an open circuit lets a trial through (0 unless open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.reset_s - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        return self.state != "open"

    def success(self) -> None:
        self.count, self._opened_at = 0, None

    def failure(self) -> None:
        self.count += 1
        if self.state == "half_open" or self.count >= self.failures:
            self._opened_at = self._clock()
