"""From the validated configuration to the queue's parts: the store, its retry schedule and
bouncer, the cluster queue's password and node name, and the control socket's path.

Owns: those translations, for the server (app.py) and for `mailgate queue`, which uses the same
ones whether it asks a live server's control socket or opens a stopped server's store. Kept apart
from app_config.py so that a queue command loads neither the listeners, screener, recipient
sources and DKIM nor, against a live server, the store: each store is imported when it is made
(issue 18: `mailgate queue list` starts in well under a second).
Must not: open the store or start anything (offline_queue.py and app.py do).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailgate.queue.backoff import RetrySchedule
from mailgate.startup_errors import StartupError

if TYPE_CHECKING:
    from mailgate.config.loader import Config
    from mailgate.core.clock import Clock
    from mailgate.delivery.bouncer import Bouncer
    from mailgate.queue.store import QueueStore


def queue_password(config: Config) -> str | None:
    """The cluster queue's database password from `queue.password_file` (its first line)."""
    path = config.queue.password_file
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().rstrip("\r\n")
    except OSError as exc:
        raise StartupError(f"queue.password_file: {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise StartupError(f"queue.password_file: {path}: not UTF-8 text") from None


def queue_node_name(config: Config) -> str:
    return config.queue.node_name or config.server.hostname


def queue_problems(config: Config) -> list[str]:
    """What keeps the configured queue backend from being used, one line per key."""
    queue = config.queue
    if queue.backend != "postgresql":
        return []
    problems = []
    if not queue.dsn:
        problems.append('queue.dsn: required with queue.backend = "postgresql"')
    try:
        queue_password(config)
    except StartupError as exc:
        problems.append(str(exc))
    return problems


def control_socket_path(config: Config) -> Path:
    return Path(config.server.control_socket or Path(config.server.spool_dir) / "control.sock")


def queue_store(config: Config, clock: Clock | None = None, *, serving: bool = True) -> QueueStore:
    """The queue store `[queue] backend` names, not opened: SQLite in `server.spool_dir`, or
    the cluster's PostgreSQL (StartupError: its password file cannot be read). Not `serving`
    (the admin commands): the cluster store does not take the node's name nor heartbeat."""
    queue = config.queue
    if queue.backend == "postgresql":
        from mailgate.queue.postgres_store import PostgresQueueStore  # only a cluster needs psycopg

        return PostgresQueueStore(
            queue.dsn, config.server.spool_dir, password=queue_password(config), node=queue_node_name(config),
            clock=clock, lease_seconds=queue.takeover_time, register=serving,
        )
    from mailgate.queue.sqlite_store import SqliteQueueStore

    return SqliteQueueStore(config.server.spool_dir, clock=clock, reserve_bytes=config.server.disk_reserve)


def retry_schedule(config: Config) -> RetrySchedule:
    delivery = config.delivery
    return RetrySchedule(steps=tuple(delivery.retry_schedule), max_interval=delivery.max_retry_interval,
                         max_lifetime=delivery.max_lifetime)


def bouncer(config: Config, store: Any, schedule: RetrySchedule, **observers: Any) -> Bouncer:
    """`store`: the queue store; `schedule`: the runner's (retry_schedule), which carries the
    lifetime; `observers`: on_queued and on_dsn (delivery/bouncer.py)."""
    from mailgate.delivery.bouncer import Bouncer

    return Bouncer(store, config.server.hostname, config.delivery.delay_warning, schedule, **observers)
