"""`mailgate queue list` loads only what its own path needs (issue 18: a million queued messages
listed, the first page in under a second, of which the page itself is ~10 ms and the rest was the
command line importing the whole server). Against a stopped server's spool it opens the store
and the admin operations, not the server's composition (listeners, screener, recipient sources,
DKIM, DNS); against a live server's control socket not even the store. Structural, not timed:
the command runs in a fresh interpreter that reports which modules it loaded."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from mailgate.config.loader import load_text
from mailgate.core.address import parse_mailbox
from mailgate.core.clock import SystemClock
from mailgate.core.envelope import Envelope, Recipient
from mailgate.delivery.admin import QueueAdmin
from mailgate.queue.sqlite_store import SqliteQueueStore
from mailgate.queue.store import MessageMeta
from mailgate.queue_config import bouncer, retry_schedule
from mailgate.server.control import ControlServer

pytestmark = pytest.mark.timeout(120)

CONFIG = """[server]
spool_dir = "{spool}"
control_socket = "{socket}"
[[listener]]
name = "mx"
address = "127.0.0.1:2799"
tls = "none"
"""

# The server's composition and the libraries behind it: no queue command needs them.
NEVER = (
    "mailgate.app", "mailgate.app_config", "mailgate.preflight", "mailgate.supervisor", "mailgate.screen",
    "mailgate.recipients", "mailgate.console", "mailgate.smtp", "mailgate.dns", "mailgate.tools.certs",
    "mailgate.tools.sender", "mailgate.tools.relay_test", "mailgate.auth.store", "mailgate.auth.dkim_keys",
    "mailgate.server.listener", "mailgate.server.session", "mailgate.observe.observation",
    "dns", "cryptography", "aiohttp", "jinja2", "psycopg", "ldap3", "dkim", "argon2", "regex", "aiosmtplib",
)
# What a live server answers for: the command needs only the control socket's client.
NOT_WITH_A_LIVE_SERVER = ("mailgate.queue.sqlite_store", "mailgate.offline_queue", "mailgate.delivery", "sqlite3")

LIST_AND_REPORT = """
import json, sys
from mailgate.cli.main import main
code = main(["queue", "list", "--config", sys.argv[1]])
with open(sys.argv[2], "w") as report:
    json.dump({"code": code, "modules": sorted(sys.modules)}, report)
"""


def loaded(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [name for name in modules if any(name == p or name.startswith(p + ".") for p in prefixes)]


async def enqueue(store: SqliteQueueStore, recipient: str) -> str:
    writer = store.begin()
    writer.write(b"Subject: t\r\n\r\nhi\r\n")
    envelope = Envelope(parse_mailbox("a@sender.test"), [Recipient(parse_mailbox(recipient))])
    return await store.commit(writer, envelope, MessageMeta(hold_reason="waiting"))


async def list_in_a_fresh_interpreter(tmp_path: Path) -> tuple[str, dict]:
    report = tmp_path / "modules.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LIST_AND_REPORT, str(tmp_path / "mailgate.toml"), str(report),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode(), json.loads(report.read_text())


@pytest.mark.parametrize("live", [False, True], ids=["stopped server", "live server"])
def test_queue_list_loads_only_its_own_path(tmp_path: Path, live: bool) -> None:
    spool = tmp_path / "spool"
    socket_path = tmp_path / "control.sock"
    config_text = CONFIG.format(spool=spool, socket=socket_path)
    (tmp_path / "mailgate.toml").write_text(config_text)

    async def scenario() -> tuple[list[str], str, dict]:
        store = SqliteQueueStore(spool)
        await store.open()
        control = None
        try:
            queued = [await enqueue(store, f"r{index}@dead.test") for index in range(3)]
            if live:
                config = load_text(config_text, source="test")
                admin = QueueAdmin(store, bouncer(config, store, retry_schedule(config)), SystemClock(), lambda: None)
                control = ControlServer(socket_path, admin)
                await control.start()
            else:
                await store.close()
            out, report = await list_in_a_fresh_interpreter(tmp_path)
            return queued, out, report
        finally:
            if control is not None:
                await control.stop()
                await store.close()

    queued, out, report = asyncio.run(scenario())
    assert report["code"] == 0
    assert [line.split()[0] for line in out.splitlines()[1:] if line[:1].isalnum()] == queued
    assert out.splitlines()[-1] == "-- 3 message(s)"
    assert loaded(report["modules"], NEVER) == []
    unneeded = loaded(report["modules"], NOT_WITH_A_LIVE_SERVER)
    if live:
        assert unneeded == []
    else:
        assert "mailgate.queue.sqlite_store" in unneeded  # the stopped server's store, opened directly
