"""The gauges sampled rather than counted: queue by state, age of the oldest message, free disk.

Owns: the loop that reads them every `interval` seconds into the metrics.
Must not: change the queue or the spool (it only reads them).
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from mailgate.core.clock import Clock
from mailgate.observe.metrics import Metrics

GAUGE_INTERVAL = 15.0  # seconds between samples; Prometheus scrapes every 15 to 60 s


async def update_gauges(store: Any, metrics: Metrics, spool_dir: str, clock: Clock,
                        interval: float = GAUGE_INTERVAL) -> None:
    """`store`: the queue store (count_by_state, oldest_created). Runs until cancelled."""
    while True:
        counts = await store.count_by_state()
        oldest = await store.oldest_created()
        metrics.set_queue({state.value: n for state, n in counts.items()},
                          clock.now() - oldest if oldest else 0.0)
        metrics.set_free_disk(shutil.disk_usage(spool_dir).free)
        await asyncio.sleep(interval)
