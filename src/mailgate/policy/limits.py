"""Message rate limits per client address and per authenticated user over a sliding window (SPEC §4).

Owns: `RateLimiter`, a pure sliding-window counter (`allow(key, now) -> bool`) with bounded
memory, and `MessageRateLimits`, the pair of limiters the session asks at MAIL FROM; when a
limit is hit the session answers `RATE_LIMITED` (450 4.7.1, RFC 5321 §4.2.5 / RFC 3463 §3.8
"delivery not authorized") and the client retries later.
Must not: read the clock itself (callers pass `now`), send replies, sleep, or decide which
clients are exempt (the caller passes no client key for those, e.g. trusted networks).

A message counts from its MAIL FROM: the session reserves it there (`reserve`, one atomic
check-and-count, so parallel sessions of one client cannot all pass the check before any of
them counted) and releases it when the transaction ends without a 250 (`release`), so sessions
that never send (the start-up self-audit, a client refused at RCPT) use up no budget.

Algorithm: the sliding-window counter (two fixed buckets per key, the previous one weighted by how
much of it the sliding window still covers). An exact log of timestamps would cost `limit`
floats per key; this costs two integers and a float, so 100,000 tracked keys stay a few MiB
whatever the limit. Guarantees, which the tests check as properties: no fixed bucket of `window`
seconds ever holds more than `limit` allowed events, so no sliding window holds more than
2 x `limit`; and a key silent for 2 x `window` is always allowed again. Memory: at most
`max_keys` keys, least recently used evicted first (an evicted key starts afresh, which errs
towards allowing, never towards refusing a client that did nothing).

`RateLimiter` counts in one process; with several workers policy/shared_limits.py keeps the same
buckets in memory all workers share, so each limit holds for the whole server (issue 13 item 4).
Both use `slide` and `weighted_count` below.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

# Keys looked at for expiry on each call: keeps the cost of one call small and bounded.
_EXPIRE_PER_CALL = 8


@dataclass(slots=True)
class Buckets:
    start: float  # start of the current fixed bucket, a multiple of `window`
    current: int
    previous: int


def bucket_start(now: float, window: float) -> float:
    return math.floor(now / window) * window


def slide(buckets: Buckets, now: float, window: float) -> Buckets:
    """The buckets as seen at `now`; a clock going backwards is treated as no time passing."""
    start = bucket_start(now, window)
    if start <= buckets.start:
        return buckets
    if start - buckets.start < window * 1.5:  # exactly one bucket later (float-safe)
        return Buckets(start, 0, buckets.current)
    return Buckets(start, 0, 0)


def unrecord(buckets: Buckets, at: float, now: float, window: float) -> Buckets:
    """The buckets at `now` without one event recorded at `at`: taken from the bucket that holds
    it, or from nothing once that bucket has slid out of the window."""
    buckets = slide(buckets, now, window)
    recorded = bucket_start(at, window)
    if abs(recorded - buckets.start) < window / 2:
        return Buckets(buckets.start, max(0, buckets.current - 1), buckets.previous)
    if abs(recorded - (buckets.start - window)) < window / 2:
        return Buckets(buckets.start, buckets.current, max(0, buckets.previous - 1))
    return buckets


def weighted_count(buckets: Buckets, now: float, window: float) -> float:
    """Events in the sliding window ending at `now`: the current bucket, and the previous one
    weighted by the share of it the window still covers."""
    buckets = slide(buckets, now, window)
    elapsed = min(max(now - buckets.start, 0.0), window)
    return buckets.previous * (1.0 - elapsed / window) + buckets.current


class RateLimiter:
    """At most `limit` events per `window` seconds per key (see the module docstring)."""

    def __init__(self, limit: int, window: float, max_keys: int = 100_000) -> None:
        if limit < 1 or window <= 0 or max_keys < 1:
            raise ValueError("limit and max_keys must be at least 1 and window positive")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._keys: OrderedDict[str, Buckets] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        """Count one event for `key` at `now` if it is within the limit; True when counted."""
        self._expire(now)
        if not self.would_allow(key, now):
            return False
        self.record(key, now)
        return True

    def would_allow(self, key: str, now: float) -> bool:
        """Would one more event be within the limit? Counts nothing."""
        return self.estimate(key, now) < self.limit

    def record(self, key: str, now: float) -> None:
        """Count one event for `key` at `now`, allowed or not by the caller's other limits."""
        buckets = self._keys.pop(key, None)
        buckets = slide(buckets, now, self.window) if buckets else Buckets(bucket_start(now, self.window), 0, 0)
        buckets.current += 1
        self._keys[key] = buckets  # most recently used at the end
        self._expire(now)

    def estimate(self, key: str, now: float) -> float:
        """Events of `key` in the sliding window ending at `now` (previous bucket weighted)."""
        buckets = self._keys.get(key)
        return 0.0 if buckets is None else weighted_count(buckets, now, self.window)

    def release(self, key: str, at: float, now: float) -> None:
        """Take back one event counted for `key` at `at` (a reserved message never sent)."""
        buckets = self._keys.get(key)
        if buckets is not None:
            self._keys[key] = unrecord(buckets, at, now, self.window)

    def __len__(self) -> int:
        return len(self._keys)

    def _expire(self, now: float) -> None:
        horizon = bucket_start(now, self.window) - self.window  # older buckets weigh nothing any more
        for key in list(islice(self._keys, _EXPIRE_PER_CALL)):
            if self._keys[key].start < horizon:
                del self._keys[key]
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)


class Limiter(Protocol):
    """A RateLimiter, or the shared one of policy/shared_limits.py."""

    def allow(self, key: str, now: float) -> bool: ...

    def release(self, key: str, at: float, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class RateDecision:
    """A refusal by a rate limit."""
    allowed: bool
    rule: str  # "rate.client" or "rate.user": logged with the refusal


class MessageRateLimits:
    """Messages per client address and per authenticated user; either limiter may be off (None)."""

    def __init__(self, per_client: Limiter | None, per_user: Limiter | None) -> None:
        self.per_client = per_client
        self.per_user = per_user

    def reserve(self, client_key: str | None, user: str | None, now: float) -> Reservation | RateDecision:
        """Called at MAIL FROM: count one message if it stays within both limits (checked and
        counted at once), else count nothing and say which limit refused. `client_key` None
        exempts the client (trusted network); `user` is the authenticated user or None."""
        client_key = client_key if self.per_client is not None else None
        user = user if self.per_user is not None else None
        if client_key is not None and not self.per_client.allow(client_key, now):
            return RateDecision(False, "rate.client")
        if user is not None and not self.per_user.allow(user, now):
            if client_key is not None:
                self.per_client.release(client_key, now, now)
            return RateDecision(False, "rate.user")
        return Reservation(self, client_key, user, now)


@dataclass(frozen=True, slots=True)
class Reservation:
    """One message counted at MAIL FROM by `limits`; released if it is never accepted."""
    limits: MessageRateLimits
    client_key: str | None
    user: str | None
    at: float

    def release(self, now: float) -> None:
        """The message was not accepted (RSET, refused, dropped): it counts no more."""
        if self.client_key is not None and self.limits.per_client is not None:
            self.limits.per_client.release(self.client_key, self.at, now)
        if self.user is not None and self.limits.per_user is not None:
            self.limits.per_user.release(self.user, self.at, now)
