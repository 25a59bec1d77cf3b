"""Retry scheduling: when a deferred recipient is tried again, and when it has waited too long.

Owns: the retry schedule (fixed steps, then a capped interval, with jitter so that recipients
deferred together do not all come back in the same second) and the maximum lifetime after which a
queued recipient is failed and bounced (SPEC §2: default 5 days, as RFC 5321 §4.5.4.1 suggests
"at least 4-5 days").
Must not: read the clock or the queue; callers pass `attempts`, times and the random source.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DEFAULT_STEPS = (60.0, 300.0, 600.0, 1800.0, 3600.0)
DEFAULT_MAX_INTERVAL = 4 * 3600.0
DEFAULT_JITTER = 0.2
# RFC 5321 §4.5.4.1: "the give-up time generally needs to be at least 4-5 days".
DEFAULT_MAX_LIFETIME = 5 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Delay after the n-th failed attempt: `steps[n-1]`, then doubling, capped at `max_interval`.

    `jitter` is a fraction: the delay is multiplied by a uniform factor in [1 - jitter, 1 + jitter]
    and then capped again, so no delay exceeds `max_interval` and none is negative.
    """

    steps: tuple[float, ...] = DEFAULT_STEPS
    max_interval: float = DEFAULT_MAX_INTERVAL
    jitter: float = DEFAULT_JITTER
    max_lifetime: float = DEFAULT_MAX_LIFETIME

    def __post_init__(self) -> None:
        if not self.steps or any(step < 0 for step in self.steps):
            raise ValueError("retry steps must be a non-empty list of non-negative seconds")
        if self.max_interval < 0:
            raise ValueError("max_interval must not be negative")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be a fraction between 0 and 1")
        if self.max_lifetime <= 0:
            raise ValueError("max_lifetime must be positive")

    def base_delay(self, attempts: int) -> float:
        """The delay before jitter after `attempts` failed attempts (1 = after the first)."""
        if attempts <= 0:
            return 0.0
        if attempts <= len(self.steps):
            return min(self.steps[attempts - 1], self.max_interval)
        doublings = min(attempts - len(self.steps), 64)  # beyond 64 the cap has long applied
        return min(self.steps[-1] * (2.0**doublings), self.max_interval)

    def next_delay(self, attempts: int, rng: random.Random) -> float:
        """Seconds to wait before the next attempt, jittered, never below 0, never above the cap."""
        base = self.base_delay(attempts)
        factor = 1.0 + rng.uniform(-self.jitter, self.jitter)
        return max(0.0, min(base * factor, self.max_interval))

    def next_attempt(self, attempts: int, now: float, rng: random.Random) -> float:
        """The absolute time of the next attempt."""
        return now + self.next_delay(attempts, rng)

    def expired(self, created: float, now: float, max_lifetime: float | None = None) -> bool:
        """True once a message created at `created` has been queued longer than its lifetime."""
        lifetime = self.max_lifetime if max_lifetime is None else max_lifetime
        return now - created >= lifetime
