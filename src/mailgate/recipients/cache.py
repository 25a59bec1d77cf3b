"""A bounded answer cache for recipient sources, with merged concurrent look-ups.

Owns: positive and negative time-to-live (as Postfix's verify(8) keeps positive answers longer
than negative ones), a bound on entries (the oldest go first, so a flood of random addresses
cannot grow memory), and single flight: concurrent look-ups of one address share one query.
Unavailable answers are never cached: the next RCPT asks again.
Must not: know how a source asks; time comes from the injected clock so tests need no sleeping.
Hand-written because no maintained asyncio library combines TTL per answer kind with single flight.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import replace

from mailgate.recipients.source import Lookup, LookupStatus


class LookupCache:
    def __init__(
        self, positive_ttl: float, negative_ttl: float, max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.positive_ttl = positive_ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, Lookup]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Lookup]] = {}

    async def get(self, key: str, ask: Callable[[], Awaitable[Lookup]]) -> Lookup:
        cached = self._fresh(key)
        if cached is not None:
            return replace(cached, cached=True)
        pending = self._pending.get(key)
        if pending is not None:
            return replace(await asyncio.shield(pending), cached=True)
        future: asyncio.Future[Lookup] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            answer = await ask()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        else:
            future.set_result(answer)
            self._store(key, answer)
            return answer
        finally:
            del self._pending[key]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _fresh(self, key: str) -> Lookup | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if self.clock() >= expires:
            del self._entries[key]
            return None
        return answer

    def _store(self, key: str, answer: Lookup) -> None:
        if answer.status is LookupStatus.UNAVAILABLE:
            return
        ttl = self.positive_ttl if answer.status is LookupStatus.FOUND else self.negative_ttl
        if ttl <= 0:
            return
        self._entries[key] = (self.clock() + ttl, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
