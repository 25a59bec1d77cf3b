"""Queue benchmark: the disk's raw sync rate against durable enqueues per second.

Usage: python bench/queue_bench.py [--dir DIR] [--seconds N] [--size BYTES ...] [--json]

Measures, in a fresh directory under DIR (default: the system temp directory):
- fsync/s: overwrite one 4 KiB block and os.fsync it, in a loop;
- fdatasync-append/s: append a 4 KiB block and os.fdatasync, in a loop;
- enqueues/s of messages of each `--size` (default 4 KiB; 102400 shows large bodies, which go to
  segment files) into SqliteQueueStore with 1, 10 and 100 concurrent asyncio producers, with the
  number of commits (fsyncs) the group-commit writer made.
Without group commit enqueues/s could not exceed the fsync rate; with it, producers share syncs.
Must not: be imported by mailgate; it is a tool for people.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from mailgate.core.address import parse_mailbox
from mailgate.core.envelope import Envelope, Recipient
from mailgate.queue.sqlite_store import SqliteQueueStore
from mailgate.queue.store import MessageMeta

BLOCK = 4096
PRODUCER_COUNTS = (1, 10, 100)


def sync_rate(directory: Path, seconds: float, *, append: bool) -> float:
    """Syncs per second: rewrite one block + fsync, or append a block + fdatasync."""
    path = directory / ("append.dat" if append else "rewrite.dat")
    block = os.urandom(BLOCK)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    count = 0
    try:
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            if append:
                os.write(descriptor, block)
                os.fdatasync(descriptor)
            else:
                os.pwrite(descriptor, block, 0)
                os.fsync(descriptor)
            count += 1
        elapsed = time.perf_counter() - start
    finally:
        os.close(descriptor)
        os.unlink(path)
    return count / elapsed


async def enqueue_rate(
    directory: Path, producers: int, seconds: float, size: int = BLOCK
) -> dict[str, float]:
    """Enqueues per second of `size`-byte messages with `producers` concurrent coroutines."""
    body = os.urandom(size)
    envelope = Envelope(
        parse_mailbox("bench@sender.example"), [Recipient(parse_mailbox("to@rcpt.example"))]
    )
    store = SqliteQueueStore(directory)
    await store.open()
    enqueued = 0

    async def produce(deadline: float) -> None:
        nonlocal enqueued
        while time.perf_counter() < deadline:
            writer = store.begin()
            writer.write(body)
            await store.commit(writer, envelope, MessageMeta())
            enqueued += 1

    try:
        commits_before = store.stats.commits
        start = time.perf_counter()
        await asyncio.gather(*(produce(start + seconds) for _ in range(producers)))
        elapsed = time.perf_counter() - start
        commits = store.stats.commits - commits_before
    finally:
        await store.close()
    return {
        "size": size,
        "producers": producers,
        "enqueues_per_second": enqueued / elapsed,
        "commits_per_second": commits / elapsed,
        "messages_per_commit": enqueued / commits if commits else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dir", default=tempfile.gettempdir(), help="where to measure (a spool's disk)"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    parser.add_argument(
        "--size", type=int, action="append", help="message size in bytes (repeatable; 4096)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    options = parser.parse_args()
    sizes = options.size or [BLOCK]

    work = Path(tempfile.mkdtemp(prefix="mailgate-bench-", dir=options.dir))
    try:
        results = {
            "dir": str(options.dir),
            "seconds": options.seconds,
            "fsync_per_second": sync_rate(work, options.seconds, append=False),
            "fdatasync_append_per_second": sync_rate(work, options.seconds, append=True),
            "enqueue": [
                asyncio.run(
                    enqueue_rate(work / f"spool-{size}-{count}", count, options.seconds, size)
                )
                for size in sizes
                for count in PRODUCER_COUNTS
            ],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if options.json:
        print(json.dumps(results, indent=2))
        return
    print(f"disk at {results['dir']}, {options.seconds:g} s per measurement")
    print(f"{'measurement':<34}{'per second':>12}{'commits/s':>12}{'msgs/commit':>13}")
    print(f"{'fsync (4 KiB rewrite)':<34}{results['fsync_per_second']:>12.0f}")
    print(f"{'fdatasync (4 KiB append)':<34}{results['fdatasync_append_per_second']:>12.0f}")
    for row in results["enqueue"]:
        size = row["size"]
        shown = f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"
        label = f"enqueue {shown}, {row['producers']} producer(s)"
        print(
            f"{label:<34}{row['enqueues_per_second']:>12.0f}"
            f"{row['commits_per_second']:>12.0f}{row['messages_per_commit']:>13.1f}"
        )


if __name__ == "__main__":
    main()
