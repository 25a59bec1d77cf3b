"""The queue of a server that is not running: recovered before the workers start, administered
by `mailgate queue` when there is no control socket to ask.

Owns: opening the configured store (also for a running server: `open_store`) and closing it.
With the cluster queue "stopped" means this node: the shared database holds every node's mail.
Must not: run while a server uses the spool (the supervisor holds the spool lock; the queue
commands ask the control socket first) or deliver anything.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from mailgate.config.loader import Config
from mailgate.core.clock import SystemClock
from mailgate.delivery.admin import QueueAdmin
from mailgate.queue.store import NodeNameInUseError, QueueStore, QueueUnavailableError
from mailgate.queue_config import bouncer, queue_store, retry_schedule
from mailgate.startup_errors import StartupConflict, StartupError

log = logging.getLogger("mailgate")


async def open_offline_admin(config: Config) -> tuple[QueueAdmin, Callable[[], Awaitable[None]]]:
    """A QueueAdmin on the store of a stopped server, and the function that closes it."""
    clock = SystemClock()
    store = queue_store(config, clock, serving=False)
    await open_store(store)
    return QueueAdmin(store, bouncer(config, store, retry_schedule(config)), clock, lambda: None), store.close


async def open_store(store: QueueStore) -> None:
    """Open the store; a database that cannot be used is a StartupError naming `queue.dsn`, a
    node name another live node serves under a StartupConflict naming `queue.node_name`."""
    try:
        await store.open()  # type: ignore[attr-defined]
    except QueueUnavailableError as exc:
        raise StartupError(f"queue.dsn: {exc}") from None
    except NodeNameInUseError as exc:
        raise StartupConflict(f"queue.node_name: {exc}") from None


async def recover_store(store: QueueStore) -> None:
    """Messages a previous run left leased go back to the queue."""
    recovered = await store.recover()
    if recovered:
        log.info("recovered %d message(s) left in delivery by a previous run", recovered)


async def recover_offline(config: Config) -> None:
    """Recover the store of a stopped server (the supervisor, before it starts its workers)."""
    store = queue_store(config)
    await open_store(store)
    try:
        await recover_store(store)
    finally:
        await store.close()
