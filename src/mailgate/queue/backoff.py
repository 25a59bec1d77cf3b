"""Retry scheduling: when a deferred recipient is tried again, and when it has waited too long.

Owns: the retry schedule (fixed steps, then a capped interval, with jitter so that recipients
deferred together do not all come back in the same second) and the maximum lifetime after which a
queued recipient is failed and bounced (SPEC §2). The one carrier of `delivery.max_lifetime`: the
runner asks it when a message expires and the bouncer when a delayed one will be given up.
Must not: read the clock or the queue (callers pass `attempts`, times and the random source), or
declare a setting's default (config/schema.py does; queue_config.retry_schedule fills this in).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DEFAULT_JITTER = 0.2  # not a setting: recipients deferred together spread over +/- 20 %


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrySchedule:
    """Delay after the n-th failed attempt: `steps[n-1]`, then doubling, capped at `max_interval`.

    `jitter` is a fraction: the delay is multiplied by a uniform factor in [1 - jitter, 1 + jitter]
    and then capped again, so no delay exceeds `max_interval` and none is negative.
    """

    steps: tuple[float, ...]  # delivery.retry_schedule
    max_interval: float  # delivery.max_retry_interval
    max_lifetime: float  # delivery.max_lifetime
    jitter: float = DEFAULT_JITTER

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

    def expired(self, created: float, now: float) -> bool:
        """True once a message created at `created` has been queued for its whole lifetime."""
        return now - created >= self.max_lifetime

    def given_up_at(self, created: float) -> float:
        """When a message created at `created` expires (a delay DSN's Will-Retry-Until, RFC 3464 §2.3.4)."""
        return created + self.max_lifetime
