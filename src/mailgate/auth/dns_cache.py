"""A cache in front of the resolver for message authentication, and the way threads reach it.

Owns: `CachingResolver`, which keeps answers (and "no such name") of the look-ups SPF, DKIM,
DMARC and ARC make for a while (bounded in time and in entries; temporary failures are never
kept, so a time-out is asked again), and `ThreadLookups`, through which code running in a worker
thread (dkimpy, pyspf) asks that resolver on the event loop and waits for the answer: the loop
never blocks, the thread does. Must not: interpret answers (each check does) or cache for
delivery (routes are re-resolved on every attempt, dns/resolver.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from mailgate.dns.resolver import DnsNoSuchDomain, DnsTemporaryError, Resolver

_NO_SUCH_DOMAIN = object()


class CachingResolver:
    """txt, a, aaaa, mx, ptr of `resolver`, kept `ttl` seconds, at most `max_entries` answers."""

    def __init__(self, resolver: Resolver, ttl: float, max_entries: int = 20000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._resolver = resolver
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()

    async def _cached(self, kind: str, name: str) -> Any:
        key = (kind, name.rstrip(".").lower())
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            self._entries.move_to_end(key)
            value = entry[1]
        else:
            try:
                value = await getattr(self._resolver, kind)(name)
            except DnsNoSuchDomain:
                value = _NO_SUCH_DOMAIN
            # DnsTemporaryError propagates uncached: the next message asks again.
            if self._ttl > 0:
                self._entries[key] = (now + self._ttl, value)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
        if value is _NO_SUCH_DOMAIN:
            raise DnsNoSuchDomain(name)
        return list(value)

    async def txt(self, name: str) -> list[str]:
        return await self._cached("txt", name)

    async def a(self, name: str) -> list[str]:
        return await self._cached("a", name)

    async def aaaa(self, name: str) -> list[str]:
        return await self._cached("aaaa", name)

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        return await self._cached("mx", domain)

    async def ptr(self, name: str) -> list[str]:
        return await self._cached("ptr", name)

    async def addresses(self, host: str) -> list[str]:
        return await self._cached("aaaa", host) + await self._cached("a", host)


class ThreadLookups:
    """Called from a worker thread: runs one look-up on `loop` and waits at most `timeout`."""

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._resolver = resolver
        self._loop = loop
        self._timeout = timeout

    def lookup(self, kind: str, name: str) -> list[Any]:
        """The answer; [] for a name that does not exist; DnsTemporaryError when unknown now."""
        future = asyncio.run_coroutine_threadsafe(getattr(self._resolver, kind)(name), self._loop)
        try:
            return future.result(self._timeout)
        except DnsNoSuchDomain:
            return []
        except TimeoutError:
            future.cancel()
            raise DnsTemporaryError(f"{name} {kind}: no answer in {self._timeout} s") from None
