"""`mailgate queue` with the cluster queue (`[queue] backend = "postgresql"`), run as a real
process: `migrate` brings a database to this schema, the queue commands see every node's mail
without any local spool, and operator mistakes get one line naming the key and exit 2."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mailgate.core.address import parse_mailbox
from mailgate.core.envelope import Envelope, Recipient
from mailgate.queue.postgres_store import PostgresQueueStore
from mailgate.queue.store import MessageMeta
from tests.conftest import free_port
from tests.support.config_text import cluster_queue
from tests.support.postgres import PASSWORD

pytestmark = pytest.mark.timeout(120)


def config(tmp_path: Path, dsn: str, password_file: Path) -> Path:
    path = tmp_path / "mailgate.toml"
    path.write_text(
        f'[server]\nspool_dir = "{tmp_path / "no-spool-here"}"\nusers_file = "{tmp_path / "users"}"\n'
        '[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\ntls = "none"\n'
        + cluster_queue(dsn, password_file)
    )
    return path


def mailgate(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailgate", *argv], capture_output=True, text=True, timeout=60)


def test_migrate_then_the_queue_commands_show_every_nodes_mail(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dsn = postgres_server.new_database()
    secret = postgres_server.write_password_file(tmp_path / "db.password")
    path = config(tmp_path, dsn, secret)
    first = mailgate("queue", "migrate", "--config", str(path))
    assert (first.returncode, first.stdout.strip()) == (0, "queue schema: version 0 -> 1"), first.stderr
    again = mailgate("queue", "migrate", "--config", str(path))
    assert (again.returncode, again.stdout.strip()) == (0, "queue schema: version 1, up to date")

    async def accept_on(node: str) -> str:
        store = PostgresQueueStore(dsn, tmp_path / node, password=PASSWORD, node=node)
        await store.open()
        try:
            writer = store.begin()
            writer.write(b"Subject: x\r\n\r\nx\r\n")
            envelope = Envelope(parse_mailbox(f"s@{node}.test"), [Recipient(parse_mailbox("r@example.net"))])
            return await store.commit(writer, envelope, MessageMeta())
        finally:
            await store.close()

    node_a, node_b = asyncio.run(accept_on("node-a")), asyncio.run(accept_on("node-b"))
    ids = {node_a, node_b}
    listed = mailgate("queue", "list", "--json", "--config", str(path))
    assert listed.returncode == 0, listed.stderr
    assert {message["queue_id"] for message in json.loads(listed.stdout)["messages"]} == ids
    held = mailgate("queue", "hold", "--sender", "node-b", "--config", str(path))  # no spool lock needed
    assert held.returncode == 0, held.stderr
    listed = mailgate("queue", "list", "--state", "held", "--json", "--config", str(path))
    assert [message["queue_id"] for message in json.loads(listed.stdout)["messages"]] == [node_b]


def test_operator_mistakes_get_one_line_naming_the_key_and_exit_2(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dsn = postgres_server.new_database()
    secret = postgres_server.write_password_file(tmp_path / "db.password")
    missing = config(tmp_path, dsn, tmp_path / "no-such-password-file")
    for argv in (("queue", "list"), ("queue", "migrate"), ("config", "check")):
        result = mailgate(*argv, "--config", str(missing))
        assert result.returncode == 2, (argv, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert any("queue.password_file" in line and "No such file" in line for line in lines), result.stderr
        assert "Traceback" not in result.stderr
    unreachable = config(tmp_path, f"host=127.0.0.1 port={free_port()} user=mailgate dbname=mailgate", secret)
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    refused = config(tmp_path, dsn, wrong)
    for path in (unreachable, refused):
        for argv in (("queue", "list"), ("queue", "migrate")):
            result = mailgate(*argv, "--config", str(path))
            assert result.returncode == 2, (argv, result.stdout, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1 and "queue.dsn: PostgreSQL:" in result.stderr, result.stderr
    no_dsn = tmp_path / "no-dsn.toml"
    no_dsn.write_text(missing.read_text().replace(f'dsn = "{dsn}"', 'dsn = ""'))
    result = mailgate("config", "check", "--config", str(no_dsn))
    assert result.returncode == 2 and "queue.dsn: required" in result.stderr, result.stderr
