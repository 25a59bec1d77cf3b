"""A cluster of real mailgate nodes (child processes) on two loopback addresses sharing one private
PostgreSQL queue, delivering to one sink (tests/support/capture_server.py).

- One node is SIGKILLed mid-delivery: every message a node acknowledged with 250 reaches the
  sink; the duplicates are counted and are all messages the dead node held a lease on when it
  died (the messages in flight); the survivor takes those over within the takeover time.
- PostgreSQL is restarted under load: while it is down clients get 451 (or 421), never a 250
  that is then lost, and the nodes reconnect by themselves.
Both loads are bounded in count and time.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import time
from pathlib import Path

import aiosmtplib
import pytest

from tests.conftest import free_port
from tests.support.capture_server import CaptureServer
from tests.support.config_text import cluster_queue, hosted_domain, relay_config
from tests.support.mailgate_server import MailgateProcess
from tests.support.postgres import PostgresInstance, start_postgres

pytestmark = pytest.mark.timeout(240)

TAKEOVER_S = 3.0
DELIVERY_WORKERS = 10  # per node: the runner's concurrent deliveries
CLIENTS = 16  # SMTP clients, half starting on each node
SEQ = re.compile(rb"^X-Seq: (\d+)\r$", re.M)
QUEUE_ID = re.compile(rb"\(mailgate\) with E?SMTP\S* id (\S+)")


def node_config(workdir: Path, address: str, port: int, name: str, pg: PostgresInstance, dsn: str, sink: int) -> str:
    secret = pg.write_password_file(workdir / "db.password")
    return relay_config(
        workdir / "spool", port,
        '[relay]\ntrusted_networks = ["127.0.0.0/8"]\n',
        hosted_domain(f"127.0.0.1:{sink}", "sink.test"),
        f'[delivery]\nworkers = {DELIVERY_WORKERS}\nretry_schedule = ["1s"]\n',
        cluster_queue(dsn, secret, name, f"{TAKEOVER_S}s"),
        hostname=f"{name}.test", server="workers = 1\nself_audit = false\n", trust_loopback=False, host=address,
    )


class Node:
    def __init__(self, root: Path, address: str, name: str, pg: PostgresInstance, dsn: str, sink: int) -> None:
        workdir = root / name
        workdir.mkdir()
        self.address, self.port, self.name = address, free_port(address), name
        self.process = MailgateProcess(workdir, node_config(workdir, address, self.port, name, pg, dsn, sink))

    def start(self) -> None:
        self.process.start(wait=(self.address, self.port))


def message(seq: int) -> bytes:
    return (f"From: <s@client.test>\r\nTo: <r@sink.test>\r\nSubject: load {seq}\r\nX-Seq: {seq}\r\n\r\n"
            + "x" * 200 + "\r\n").encode()


class Load:
    """Clients sending numbered messages; `acknowledged` holds the numbers that got a 250."""

    def __init__(self) -> None:
        self.acknowledged: set[int] = set()
        self.refusals: list[tuple[float, str]] = []  # (time, reply or error) of sends not accepted
        self._next = 0

    def take(self, limit: int) -> int | None:
        if self._next >= limit:
            return None
        self._next += 1
        return self._next

    async def client(self, targets: list[tuple[str, int]], limit: int, deadline: float, pause: float = 0.0) -> None:
        """Sends to the first target; after a failure to the next one (as MX fail-over does)."""
        smtp: aiosmtplib.SMTP | None = None
        turn = 0
        while time.monotonic() < deadline:
            address, port = targets[turn % len(targets)]
            seq = self.take(limit)
            if seq is None:
                break
            try:
                if smtp is None or not smtp.is_connected:
                    smtp = aiosmtplib.SMTP(hostname=address, port=port, timeout=10, local_hostname="client.test")
                    await smtp.connect()
                await smtp.sendmail("s@client.test", ["r@sink.test"], message(seq))
                self.acknowledged.add(seq)
            except (aiosmtplib.SMTPException, OSError) as exc:
                self.refusals.append((time.monotonic(), str(exc)))
                smtp = None
                turn += 1
                await asyncio.sleep(0.2)  # a real client waits a little before it tries again
            if pause:
                await asyncio.sleep(pause)
        if smtp is not None and smtp.is_connected:
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                pass


def delivered(sink: CaptureServer) -> list[int]:
    seqs = []
    for transaction in sink.completed:
        found = SEQ.search(transaction.data or b"")
        if found:
            seqs.append(int(found.group(1)))
    return seqs


def arrivals(sink: CaptureServer) -> dict[str, int]:
    """How many times each queue id (from our Received header) reached the sink."""
    counts: dict[str, int] = {}
    for transaction in sink.completed:
        found = QUEUE_ID.search(transaction.data or b"")
        if found:
            counts[found.group(1).decode()] = counts.get(found.group(1).decode(), 0) + 1
    return counts


async def wait_for(condition, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.1)
    return condition()


def test_a_node_killed_mid_delivery_loses_nothing_and_the_survivor_takes_over(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pg: PostgresInstance = postgres_server
    dsn = pg.new_database()
    database = dsn.rsplit("dbname=", 1)[1]
    total = 3000

    async def scenario() -> None:
        async with CaptureServer(delays={"END_OF_DATA": 0.02}) as sink:
            first = Node(tmp_path, "127.0.0.2", "node-a", pg, dsn, sink.port)
            second = Node(tmp_path, "127.0.0.3", "node-b", pg, dsn, sink.port)
            await asyncio.to_thread(first.start)
            await asyncio.to_thread(second.start)
            try:
                load = Load()
                deadline = time.monotonic() + 90
                targets = [(first.address, first.port), (second.address, second.port)]
                clients = [asyncio.create_task(load.client(targets[n % 2:] + targets[:n % 2], total, deadline))
                           for n in range(CLIENTS)]
                assert await wait_for(lambda: len(delivered(sink)) >= total // 4, 60), "no delivery under way"
                await asyncio.to_thread(first.process.kill)
                killed = time.monotonic()
                in_flight = set(pg.psql("SELECT queue_id FROM messages WHERE lease_node = 'node-a'"
                                        " AND lease_owner IS NOT NULL", database=database).split())

                at_kill = arrivals(sink)

                def taken_over() -> bool:  # each message the dead node held arrived (again) since
                    now = arrivals(sink)
                    return all(now.get(queue_id, 0) > at_kill.get(queue_id, 0) for queue_id in in_flight)

                assert await wait_for(taken_over, 60), "the dead node's messages were not taken over"
                takeover = time.monotonic() - killed
                await asyncio.gather(*clients)
                acknowledged = set(load.acknowledged)
                assert len(acknowledged) >= total - 50, f"only {len(acknowledged)} of {total} acknowledged"
                arrived = await wait_for(lambda: acknowledged <= set(delivered(sink)), 60)
                seqs = delivered(sink)
                missing = acknowledged - set(seqs)
                assert arrived and not missing, f"{len(missing)} acknowledged messages never arrived: {sorted(missing)[:10]}"
                duplicates = len(seqs) - len(set(seqs))
                # In flight: the runner's deliveries plus messages its sessions were handing to it.
                assert duplicates <= len(in_flight) <= DELIVERY_WORKERS + CLIENTS, (duplicates, len(in_flight))
                # The survivor records its last outcomes after the sink saw the messages: wait for them.
                def queue_empty() -> bool:
                    return pg.psql("SELECT count(*) FROM messages", database=database) == "0"

                assert await wait_for(queue_empty, 60), \
                    f"{pg.psql('SELECT count(*) FROM messages', database=database)} messages still queued"
                print(f"\ncluster fail-over: {total} sent, {len(acknowledged)} acknowledged, "
                      f"{len(in_flight)} in flight on the killed node, {duplicates} duplicates, "
                      f"its messages delivered by the survivor {takeover:.1f}s after the kill "
                      f"(takeover_time {TAKEOVER_S}s)")
            finally:
                first.process.stop()
                second.process.stop()

    asyncio.run(scenario())


def test_postgresql_restarted_under_load_gives_451_never_a_lost_250(tmp_path: Path) -> None:
    pg = start_postgres()
    try:
        dsn = pg.new_database()
        total = 1500

        async def scenario() -> None:
            async with CaptureServer() as sink:
                nodes = [Node(tmp_path, "127.0.0.2", "node-a", pg, dsn, sink.port),
                         Node(tmp_path, "127.0.0.3", "node-b", pg, dsn, sink.port)]
                for node in nodes:
                    await asyncio.to_thread(node.start)
                try:
                    load = Load()
                    deadline = time.monotonic() + 90
                    targets = [(node.address, node.port) for node in nodes]
                    clients = [asyncio.create_task(load.client(targets[n % 2:] + targets[:n % 2], total, deadline, 0.01))
                               for n in range(8)]
                    assert await wait_for(lambda: len(load.acknowledged) >= total // 4, 60)
                    await asyncio.to_thread(pg.stop)
                    down = time.monotonic()
                    await asyncio.sleep(2.0)
                    await asyncio.to_thread(pg.start)
                    up = time.monotonic()
                    during = [text for when, text in load.refusals if down <= when <= up + 0.5]
                    assert during, "no client was refused while PostgreSQL was down"
                    assert all(re.search(r"\b(451|421)\b", text) or "onnect" in text for text in during), during[:5]
                    acknowledged_before_restart = len(load.acknowledged)
                    await asyncio.gather(*clients)
                    assert len(load.acknowledged) > acknowledged_before_restart, "the nodes never accepted mail again"
                    acknowledged = set(load.acknowledged)
                    arrived = await wait_for(lambda: acknowledged <= set(delivered(sink)), 60)
                    missing = acknowledged - set(delivered(sink))
                    assert arrived and not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:10]}"
                    print(f"\npostgresql restart: {len(acknowledged)} acknowledged, {len(load.refusals)} refused "
                          f"({len(during)} while down), all delivered")
                finally:
                    for node in nodes:
                        node.process.stop()

        asyncio.run(scenario())
    finally:
        pg.cleanup()


def test_a_second_live_node_with_the_same_name_is_refused_and_a_crashed_one_restarts(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Leases and heartbeats are keyed by `queue.node_name`: a second live node under the same
    name would renew and finish the first one's claims. It must exit 1 with one line naming the
    key and the other node, while the first keeps serving; a restart after a clean stop, or after
    a crash once the dead node's heartbeat is older than the takeover time, must start."""
    pg: PostgresInstance = postgres_server
    dsn = pg.new_database()
    sink = free_port()  # nothing delivers in this test: the mail stays queued
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = Node(tmp_path / "first", "127.0.0.2", "twin", pg, dsn, sink)
    second = Node(tmp_path / "second", "127.0.0.3", "twin", pg, dsn, sink)

    def send(node: Node) -> None:
        with smtplib.SMTP(node.address, node.port, local_hostname="client.test", timeout=30) as smtp:
            smtp.sendmail("s@client.test", ["r@sink.test"], message(1))  # raises unless 250

    first.start()
    try:
        second.process.start()
        assert second.process.process is not None
        assert second.process.process.wait(60) == 1, second.process.log()
        refusals = [line for line in second.process.log().splitlines() if "queue.node_name" in line]
        assert len(refusals) == 1, second.process.log()
        assert re.search(r"node 'twin' is alive \(last heartbeat \d+\.\ds ago.*\); "
                         r"queue\.node_name must be unique per node", refusals[0]), refusals
        assert "Traceback" not in second.process.log()
        send(first)  # the first node still serves
        assert first.process.process is not None and first.process.process.poll() is None

        assert first.process.stop() == 0  # a clean stop gives the name up at once
        second.start()
        send(second)
        second.process.kill()  # a crash: its heartbeat is fresh for the takeover time
        time.sleep(TAKEOVER_S + 1.0)
        second.start()  # its own stale heartbeat does not stop the restart
        send(second)
    finally:
        first.process.stop()
        second.process.stop()
