"""Crash safety: SIGKILL a process that is enqueueing, reopen the spool, and lose nothing.

Each round starts `tests.support.crash_enqueuer` on the same spool, waits until it is enqueueing,
kills it with SIGKILL at a random instant, then reopens the store and checks that
- every id the child printed (it prints only after commit() returned: "we said 250") is present
  with a byte-identical body and the envelope the child meant;
- every visible message, printed or not, is whole: its body and envelope are exactly what its seed
  makes, so no half-written message ever becomes visible;
- recover() leaves no spill file behind and SQLite's integrity check passes;
- large bodies really went to segment files, every segment's live count matches the messages
  pointing into it, and after recover() no segment file is left that holds no live body.
The spool accumulates over the rounds, so earlier messages must also survive later crashes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailgate.queue.segments import segment_numbers
from mailgate.queue.postgres_store import PostgresQueueStore
from mailgate.queue.sqlite_store import SqliteQueueStore
from mailgate.queue.store import QueueFilter, QueueStore
from tests.support.crash_enqueuer import CRASH_INSTANCE, expected_message, seed_of
from tests.support.postgres import PASSWORD

ROUNDS = 15
PG_ROUNDS = 8
PRODUCERS = 4
REPO_ROOT = Path(__file__).resolve().parents[2]


def _run_child_until_killed(spool: Path, base_seed: int, delay: float, log: Path,
                            dsn: str | None = None) -> dict[str, str]:
    """Start the child, let it enqueue for `delay` seconds, SIGKILL it; its acknowledged ids.

    Its stdout is drained by a thread all along: a full pipe would block the child in print()
    and every kill would land at that same point instead of at a random instant.
    """
    with open(log, "ab") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.support.crash_enqueuer"]
            + [str(spool), str(base_seed), str(PRODUCERS)] + ([dsn] if dsn else []),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert child.stdout is not None
    output: list[bytes] = []
    lines = child.stdout
    drain = threading.Thread(target=lambda: output.extend(iter(lines.readline, b"")))
    try:
        first = child.stdout.readline()
        assert first == b"READY\n", f"child did not start: {first!r}, see {log}"
        drain.start()
        time.sleep(delay)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        if drain.ident is not None:  # started
            drain.join(timeout=10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    acknowledged = {}
    for line in output:
        if line.endswith(b"\n"):  # a line cut short by the kill was not acknowledged
            queue_id, digest = line.decode("ascii").split()
            acknowledged[queue_id] = digest
    return acknowledged


async def _body_digest(store: QueueStore, queue_id: str) -> str:
    digest = hashlib.sha256()
    async for chunk in store.body_chunks(queue_id):
        digest.update(chunk)
    return digest.hexdigest()


async def _verify(spool: Path, acknowledged: dict[str, str], checked: dict[str, tuple[int, str]], *,
                  reread: bool, dsn: str | None = None) -> None:
    """Every acknowledged id is present; every message not yet in `checked` is whole and right.

    `checked` maps ids already verified against their seed in an earlier round to (size, sha256).
    Those are checked for presence and size only, which keeps the rounds fast as the spool grows;
    with `reread` their bodies are read again and compared with the digest (the last pass).
    """
    store: SqliteQueueStore | PostgresQueueStore
    if dsn is None:
        store = SqliteQueueStore(spool)
    else:  # the same node name as the child: its leases and spill files are this node's
        store = PostgresQueueStore(dsn, spool, password=PASSWORD, node="crash", instance=CRASH_INSTANCE)
    await store.open()
    try:
        await store.recover()
        assert os.listdir(store.incoming_dir) == []
        visible = {summary.queue_id: summary.size for summary in await store.list(QueueFilter())}
        missing = (set(acknowledged) | set(checked)) - set(visible)
        assert not missing, f"acknowledged messages lost: {sorted(missing)[:5]}"
        for queue_id, size in visible.items():
            if queue_id in checked:
                assert checked[queue_id][0] == size
                if reread:
                    assert await _body_digest(store, queue_id) == checked[queue_id][1]
                continue
            message = await store.get(queue_id)
            assert message is not None
            envelope, body = expected_message(seed_of(message.envelope))
            digest = await _body_digest(store, queue_id)
            assert digest == hashlib.sha256(body).hexdigest(), f"{queue_id} body differs"
            assert message.size == len(body) == size
            assert message.envelope == envelope, f"{queue_id} envelope differs"
            if queue_id in acknowledged:
                assert acknowledged[queue_id] == digest
            checked[queue_id] = (size, digest)
    finally:
        await store.close()


def _integrity(spool: Path) -> str:
    connection = sqlite3.connect(spool / "queue.db")
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


def _segment_bodies(spool: Path) -> int:
    """Checks the segment bookkeeping after recover(); returns how many bodies are in segments."""
    connection = sqlite3.connect(spool / "queue.db")
    try:
        referenced = dict(connection.execute(
            "SELECT body_segment, count(*) FROM messages WHERE body_segment IS NOT NULL"
            " GROUP BY body_segment"
        ).fetchall())
        live = dict(connection.execute("SELECT id, live FROM segments").fetchall())
    finally:
        connection.close()
    assert {number: count for number, count in live.items() if count} == referenced
    assert set(segment_numbers(spool / "segments")) == set(referenced)  # no orphans, none missing
    return sum(referenced.values())


@pytest.mark.timeout(120)
def test_sigkill_during_enqueue_loses_no_acknowledged_message(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    rng = random.Random(20240531)
    acknowledged: dict[str, str] = {}
    checked: dict[str, tuple[int, str]] = {}
    for round_number in range(ROUNDS):
        delay = rng.uniform(0.2, 1.5)
        printed = _run_child_until_killed(spool, round_number + 1, delay, tmp_path / "child.log")
        assert not set(printed) & set(checked), "a queue id was handed out twice"
        acknowledged.update(printed)
        asyncio.run(_verify(spool, acknowledged, checked, reread=False))
        assert _integrity(spool) == "ok"
        in_segments = _segment_bodies(spool)
    assert in_segments > ROUNDS  # sizes reach 300 KB: many bodies took the segment path
    assert len(acknowledged) > ROUNDS  # the child really was enqueueing when it died
    asyncio.run(_verify(spool, acknowledged, checked, reread=True))  # finally, every body again


@pytest.mark.timeout(120)
def test_sigkill_during_enqueue_loses_no_acknowledged_message_on_postgresql(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same crash, with the cluster store: what the child acknowledged is in PostgreSQL,
    byte-identical, and nothing half-written is visible (bodies span several rows)."""
    dsn = postgres_server.new_database()
    spool = tmp_path / "spool"
    rng = random.Random(20261205)
    acknowledged: dict[str, str] = {}
    checked: dict[str, tuple[int, str]] = {}
    for round_number in range(PG_ROUNDS):
        printed = _run_child_until_killed(spool, round_number + 1, rng.uniform(0.3, 1.5), tmp_path / "child.log", dsn)
        assert not set(printed) & set(checked), "a queue id was handed out twice"
        acknowledged.update(printed)
        asyncio.run(_verify(spool, acknowledged, checked, reread=False, dsn=dsn))
    assert len(acknowledged) > PG_ROUNDS  # the child really was enqueueing when it died
    asyncio.run(_verify(spool, acknowledged, checked, reread=True, dsn=dsn))
