"""`ticking_while`: how often an event loop ran other work while a test awaited something, the
proof that the awaited work did not hold the loop up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def ticking_while(awaitable: Awaitable[T], interval: float = 0.0) -> tuple[T, int]:
    """Await `awaitable`; also return how many times a ticker task ran meanwhile (every
    `interval` seconds, or at every turn of the loop with 0)."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(interval)

    task = asyncio.create_task(ticker())
    try:
        return await awaitable, ticks
    finally:
        task.cancel()
