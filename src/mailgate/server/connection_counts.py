"""Connection counts of one listener: in all and per client, for one process or all workers.

Owns: `LocalCounts` (one process) and `SharedCounts` (anonymous shared memory made by the
supervisor before it forks, so `max_connections` and `max_connections_per_client` hold for the
whole server, not per worker: issue 13 item 4, where 2 workers let 100 connections in from one
address whose limit was 50). Both answer `try_add(key)` (False: over a limit, nothing counted)
and `remove(key)`.
Must not: know sockets or SMTP; the listener says which key (client_key: an IPv6 /64) to count.

SharedCounts keeps one counter per hash bucket of the key: two clients in one bucket share
their limit, which can only refuse earlier, never let more in (fail closed); with 65,536
buckets that needs far more simultaneous clients than any listener allows.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import zlib
from collections import Counter

BUCKETS = 65536


class LocalCounts:
    def __init__(self, max_connections: int, max_per_client: int) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self._total = 0
        self._per_client: Counter[str] = Counter()

    def try_add(self, key: str) -> bool:
        if self._total >= self.max_connections or self._per_client[key] >= self.max_per_client:
            return False
        self._total += 1
        self._per_client[key] += 1
        return True

    def remove(self, key: str) -> None:
        self._total -= 1
        self._per_client[key] -= 1
        if self._per_client[key] <= 0:
            del self._per_client[key]


class SharedCounts:
    """Made before fork; every worker process then counts in the same memory under one lock
    (held for a few arithmetic operations, never across an await)."""

    def __init__(self, max_connections: int, max_per_client: int, buckets: int = BUCKETS) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self._buckets = buckets
        self._counts = multiprocessing.Array(ctypes.c_int32, buckets + 1)  # last one: the total

    def _bucket(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self._buckets

    def try_add(self, key: str) -> bool:
        bucket, total = self._bucket(key), self._buckets
        with self._counts.get_lock():
            counts = self._counts.get_obj()
            if counts[total] >= self.max_connections or counts[bucket] >= self.max_per_client:
                return False
            counts[total] += 1
            counts[bucket] += 1
        return True

    def remove(self, key: str) -> None:
        bucket, total = self._bucket(key), self._buckets
        with self._counts.get_lock():
            counts = self._counts.get_obj()
            counts[total] -= 1
            counts[bucket] -= 1
