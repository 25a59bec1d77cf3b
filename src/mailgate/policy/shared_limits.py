"""Message rate limits that hold for the whole server: the sliding-window buckets in shared memory.

Owns: `RateTable`, a fixed-size table in anonymous shared memory made before the workers fork
(cli/serve_cmd.py), and `SharedRateLimiter`, the `RateLimiter` interface (`allow`,
`would_allow`, `record`, `release`, `estimate`) over one table. Every worker counts in the same buckets,
so `messages_per_client` and `messages_per_user` hold for the server, not per worker (issue 13
item 4: each worker used to count ceil(limit / workers) on its own, and one client's
connections land on workers unevenly).
Must not: read the clock (callers pass `now`), send replies, or know sessions.

Layout: `SLOTS` entries in sets of `WAYS`; a key lives in the set its 64-bit BLAKE2b fingerprint
names, in the way whose fingerprint matches (so two keys share buckets only if their 64-bit
fingerprints are equal). A new key takes an empty or expired way, else the way with the
smallest count, which then starts afresh: like the RateLimiter's bounded memory this errs
towards allowing a key with little history, never towards refusing a client that did nothing.
One lock guards the table, held for a few arithmetic operations, never across an await.
Limit and window belong to the limiter, not the table: a reload builds new limiters over the
same tables, so what was counted is kept.
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
from dataclasses import dataclass

from mailgate.policy.limits import Buckets, bucket_start, slide, unrecord, weighted_count

WAYS = 8
SLOTS = 65536  # 32 bytes each: 2 MiB of shared memory per table


class _Slot(ctypes.Structure):
    _fields_ = [
        ("fingerprint", ctypes.c_uint64),  # 0: empty
        ("start", ctypes.c_double),
        ("current", ctypes.c_int64),
        ("previous", ctypes.c_int64),
    ]


class RateTable:
    """Shared buckets for one limit; make it before forking so every worker maps the same memory."""

    def __init__(self, slots: int = SLOTS) -> None:
        if slots < WAYS or slots % WAYS:
            raise ValueError(f"slots must be a positive multiple of {WAYS}")
        self.sets = slots // WAYS
        self.slots = multiprocessing.Array(_Slot, slots)


@dataclass(frozen=True)
class RateTables:
    """The two tables of the message limits (policy/limits.py MessageRateLimits)."""
    per_client: RateTable
    per_user: RateTable

    @classmethod
    def create(cls) -> RateTables:
        return cls(RateTable(), RateTable())


def _fingerprint(key: str) -> int:
    value = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
    return value or 1  # 0 marks an empty way


class SharedRateLimiter:
    """At most `limit` events per `window` seconds per key, counted in a shared `RateTable`."""

    def __init__(self, table: RateTable, limit: int, window: float) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be at least 1 and window positive")
        self.table = table
        self.limit = limit
        self.window = window

    def allow(self, key: str, now: float) -> bool:
        """Count one event for `key` at `now` if it is within the limit; True when counted."""
        fingerprint = _fingerprint(key)
        with self.table.slots.get_lock():
            slot = self._find(fingerprint)
            if slot is not None and weighted_count(self._buckets(slot), now, self.window) >= self.limit:
                return False
            self._count(fingerprint, slot, now)
        return True

    def would_allow(self, key: str, now: float) -> bool:
        """Would one more event be within the limit? Counts nothing."""
        return self.estimate(key, now) < self.limit

    def record(self, key: str, now: float) -> None:
        """Count one event for `key` at `now`, allowed or not by the caller's other limits."""
        fingerprint = _fingerprint(key)
        with self.table.slots.get_lock():
            self._count(fingerprint, self._find(fingerprint), now)

    def release(self, key: str, at: float, now: float) -> None:
        """Take back one event counted for `key` at `at` (a reserved message never sent)."""
        with self.table.slots.get_lock():
            slot = self._find(_fingerprint(key))
            if slot is not None:
                buckets = unrecord(self._buckets(slot), at, now, self.window)
                slot.start, slot.current, slot.previous = buckets.start, buckets.current, buckets.previous

    def estimate(self, key: str, now: float) -> float:
        """Events of `key` in the sliding window ending at `now` (previous bucket weighted)."""
        with self.table.slots.get_lock():
            slot = self._find(_fingerprint(key))
            return 0.0 if slot is None else weighted_count(self._buckets(slot), now, self.window)

    def _ways(self, fingerprint: int) -> range:
        first = (fingerprint % self.table.sets) * WAYS
        return range(first, first + WAYS)

    def _find(self, fingerprint: int) -> _Slot | None:
        slots = self.table.slots.get_obj()
        for index in self._ways(fingerprint):
            if slots[index].fingerprint == fingerprint:
                return slots[index]
        return None

    @staticmethod
    def _buckets(slot: _Slot) -> Buckets:
        return Buckets(slot.start, slot.current, slot.previous)

    def _count(self, fingerprint: int, slot: _Slot | None, now: float) -> None:
        if slot is None:
            slot = self._free_way(fingerprint, now)
            slot.fingerprint, slot.start, slot.current, slot.previous = fingerprint, bucket_start(now, self.window), 0, 0
        buckets = slide(self._buckets(slot), now, self.window)
        slot.start, slot.current, slot.previous = buckets.start, buckets.current + 1, buckets.previous

    def _free_way(self, fingerprint: int, now: float) -> _Slot:
        """An empty way of the key's set, else the one counting least (expired ones count 0)."""
        slots = self.table.slots.get_obj()
        ways = [slots[index] for index in self._ways(fingerprint)]
        for slot in ways:
            if slot.fingerprint == 0:
                return slot
        return min(ways, key=lambda slot: weighted_count(self._buckets(slot), now, self.window))
