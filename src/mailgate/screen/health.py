"""Whether the scanners answer: for /readyz, and one warning when one starts failing.

Owns: `ScannerHealth`, the last outcome of each scanner (antivirus, spam) as the screener and
the periodic probe report it. A fail-closed scanner that failed last (within `STALE_AFTER`
seconds, since a scanner without a probe is only heard of when mail arrives) is a readiness
problem: every message gets 451 until it answers again. A fail-open one is only logged.
One warning when a scanner starts failing and one line when it recovers, not one per message.
Must not: scan, or decide what a failure means for a message (screener.py does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("mailgate.screen")

STALE_AFTER = 300.0  # seconds a failure of a scanner nobody probes stays a readiness problem
PROBE_INTERVAL = 15.0  # seconds between clamd PINGs


@dataclass
class _State:
    error: str
    since: float
    last: float
    blocks_mail: bool


class ScannerHealth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failing: dict[str, _State] = {}

    def failed(self, scanner: str, error: str, *, blocks_mail: bool) -> None:
        now = self._clock()
        state = self._failing.get(scanner)
        if state is None:
            consequence = "messages get 451 until it answers" if blocks_mail else "messages pass unscanned (fail_open)"
            log.warning("%s scanner failing: %s; %s", scanner, error, consequence)
            self._failing[scanner] = _State(error, now, now, blocks_mail)
        else:
            state.error, state.last = error, now

    def succeeded(self, scanner: str) -> None:
        state = self._failing.pop(scanner, None)
        if state is not None:
            log.warning("%s scanner answers again after %.0f s", scanner, self._clock() - state.since)

    def problems(self) -> list[str]:
        """Readiness problems: each fail-closed scanner whose last outcome was a failure."""
        now = self._clock()
        return [f"{scanner} scanner failing: {state.error} (messages get 451)"
                for scanner, state in sorted(self._failing.items())
                if state.blocks_mail and now - state.last < STALE_AFTER]


async def probe_periodically(probe: Callable[[], Awaitable[None] | None], interval: float = PROBE_INTERVAL) -> None:
    """Run `probe()` (the current screener's, or None when there is none) every `interval`."""
    while True:
        pending = probe()
        if pending is not None:
            await pending
        await asyncio.sleep(interval)
