"""Running as a service: SIGHUP reloads without dropping connections and refuses a bad
configuration; SIGTERM drains, letting a transaction in progress finish, and leaves the queue whole.

Each test runs `python -m mailgate serve --config` as a child (`MailgateProcess`) and signals it as
an admin or systemd would. Waits are bounded polls of the child's log or of the port.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.queue.sqlite_store import SqliteQueueStore
from mailgate.queue.store import QueueFilter
from tests.conftest import free_port
from tests.support.config_text import hosted_domain, relay_config
from tests.support.mailgate_server import MailgateProcess

pytestmark = pytest.mark.timeout(120)

UNTRUSTED = "127.0.0.2"  # outside trusted_networks: may only send to hosted domains
RELOADED = "configuration reloaded from"
REFUSED = "reload refused, keeping the running configuration"
MESSAGE = b"From: <a@external.test>\r\nSubject: drain\r\n\r\n" + b"first half of the body\r\n" * 50
SECOND_HALF = b"second half, sent after SIGTERM\r\n" * 50


def config(spool: Path, port: int, dead_port: int, domains: tuple[str, ...], extra: str = "") -> str:
    hosted = [hosted_domain(f"127.0.0.1:{dead_port}", name) for name in domains]
    return relay_config(spool, port, *hosted, f'[delivery]\nsmart_host = "127.0.0.1:{dead_port}"\n',
                        server=extra + "\n")


class Relay:
    """One mailgate child with its config file, port and spool."""

    def __init__(self, workdir: Path) -> None:
        self.spool = workdir / "spool"
        self.port = free_port()
        self.dead_port = free_port()  # nobody listens: mail stays queued
        self.process = MailgateProcess(workdir, self.config(("hosted.test",)))

    def config(self, domains: tuple[str, ...], extra: str = "") -> str:
        return config(self.spool, self.port, self.dead_port, domains, extra)

    def rewrite(self, text: str) -> None:
        self.process.config_path.write_text(text)

    def signal(self, signum: int) -> None:
        assert self.process.process is not None
        os.kill(self.process.process.pid, signum)

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.process.log()
            if log.count(text) >= count:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} x{count} not logged in {timeout}s:\n{self.process.log()}")

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Every worker process has started (the supervisor, if any, says how many): only then
        are the signal handlers installed, so a signal cannot hit a half-started worker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.process.log()
            workers = re.search(r"started (\d+) workers", log)
            if log.count("mailgate ready") >= (int(workers.group(1)) if workers else 1):
                return
            time.sleep(0.05)
        raise AssertionError(f"mailgate not ready in {timeout}s:\n{self.process.log()}")

    def client(self, source: str = UNTRUSTED) -> smtplib.SMTP:
        smtp = smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=15,
                            source_address=(source, 0))
        assert smtp.ehlo()[0] == 250
        return smtp


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    relay = Relay(tmp_path)
    relay.process.start(wait=("127.0.0.1", relay.port))
    relay.wait_until_ready()
    try:
        yield relay
    finally:
        relay.process.stop(timeout=15)


def rcpt_code(smtp: smtplib.SMTP, recipient: str) -> int:
    assert smtp.mail("a@external.test")[0] == 250
    code = smtp.rcpt(recipient)[0]
    assert smtp.rset()[0] == 250
    return code


def test_sighup_applies_a_good_configuration_without_dropping_an_open_connection(relay: Relay) -> None:
    smtp = relay.client()
    try:
        assert rcpt_code(smtp, "user@hosted.test") == 250
        assert rcpt_code(smtp, "user@second.test") == 550  # not hosted yet: no relay for us

        relay.rewrite(relay.config(("hosted.test", "second.test")))
        relay.signal(signal.SIGHUP)
        relay.wait_for_log(RELOADED)

        # The same connection goes on, and the new domain is accepted on it.
        assert smtp.noop()[0] == 250
        assert smtp.sendmail("a@external.test", ["user@second.test"], MESSAGE) == {}
        smtp.quit()
    finally:
        smtp.close()
    with relay.client() as fresh:
        assert rcpt_code(fresh, "user@second.test") == 250
    assert relay.process.process is not None and relay.process.process.poll() is None


def test_sighup_applies_a_new_screen_rule_and_warns_about_a_restart_key(relay: Relay) -> None:
    """Issue 20 item 2: the old [[screen_rule]] used to stay in force after a reload."""
    invoice = b"From: <a@external.test>\r\nSubject: hello\r\n\r\nplease pay this invoice\r\n"
    with relay.client() as smtp:
        assert smtp.sendmail("a@external.test", ["user@hosted.test"], invoice) == {}
    rule = '\n[[screen_rule]]\nname = "no-invoices"\nbody = ["invoice"]\naction = "reject"\n'
    relay.rewrite(relay.config(("hosted.test",)).replace('hostname = "mx.test"', 'hostname = "renamed.test"') + rule)
    relay.signal(signal.SIGHUP)
    log = relay.wait_for_log(RELOADED)
    assert "server.hostname changed; it takes effect after a restart" in log
    with relay.client() as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("a@external.test", ["user@hosted.test"], invoice)
        assert refused.value.smtp_code == 550
        assert smtp.ehlo()[1].startswith(b"mx.test")  # the running name is kept until a restart


@pytest.mark.parametrize(
    ("bad_config", "logged"),
    [
        ("[server\nhostname = ", "toml"),
        ("unknown", "server.no_such_key"),
        ("open relay", "open relay"),
    ],
)
def test_sighup_with_a_bad_configuration_keeps_the_running_one(relay: Relay, bad_config: str, logged: str) -> None:
    texts = {
        "unknown": relay.config(("hosted.test", "second.test"), extra="no_such_key = 1"),
        "open relay": relay.config(("hosted.test", "second.test")).replace(
            '["127.0.0.1/32"]', '["0.0.0.0/0"]'
        ),
    }
    smtp = relay.client()
    try:
        relay.rewrite(texts.get(bad_config, bad_config))
        relay.signal(signal.SIGHUP)
        log = relay.wait_for_log(REFUSED)
        assert logged in log.split(REFUSED, 1)[1].lower(), log
        assert RELOADED not in log
        # The old configuration is in force: hosted.test only, and the connection is still up.
        assert rcpt_code(smtp, "user@hosted.test") == 250
        assert rcpt_code(smtp, "user@second.test") == 550
        assert rcpt_code(smtp, "user@other.example") == 550  # the bad open relay never applied
        smtp.quit()
    finally:
        smtp.close()
    # A good configuration after the bad one is taken again.
    relay.rewrite(relay.config(("hosted.test", "second.test")))
    relay.signal(signal.SIGHUP)
    relay.wait_for_log(RELOADED)
    with relay.client() as fresh:
        assert rcpt_code(fresh, "user@second.test") == 250


def _port_refuses(port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except ConnectionRefusedError:
            return True
        time.sleep(0.05)
    return False


async def _queue_contents(spool: Path) -> dict[str, bytes]:
    store = SqliteQueueStore(spool)
    await store.open()
    try:
        out = {}
        for summary in await store.list(QueueFilter()):
            out[summary.sender] = b"".join([c async for c in store.body_chunks(summary.queue_id)])
        return out
    finally:
        await store.close()


def test_sigterm_drains_a_transaction_in_progress_and_keeps_the_queue(relay: Relay) -> None:
    with relay.client() as before:
        assert before.sendmail("queued-before@external.test", ["user@hosted.test"], MESSAGE) == {}

    smtp = relay.client()
    try:
        assert smtp.mail("in-flight@external.test")[0] == 250
        assert smtp.rcpt("user@hosted.test")[0] == 250
        smtp.putcmd("data")
        assert smtp.getreply()[0] == 354
        smtp.send(MESSAGE)

        relay.signal(signal.SIGTERM)
        assert _port_refuses(relay.port), "still accepting after SIGTERM"

        smtp.send(SECOND_HALF + b".\r\n")
        code, text = smtp.getreply()
        assert code == 250 and text.startswith(b"2.0.0 OK queued as "), (code, text)
        # The transaction done, the stopping server ends the session (RFC 5321 §3.8).
        assert smtp.getreply() == (421, b"4.3.2 Service shutting down, closing connection")
    finally:
        smtp.close()

    assert relay.process.process is not None
    assert relay.process.process.wait(timeout=30) == 0, relay.process.log()
    queue = asyncio.run(_queue_contents(relay.spool))
    assert set(queue) == {"queued-before@external.test", "in-flight@external.test"}
    assert queue["queued-before@external.test"].endswith(MESSAGE)
    assert queue["in-flight@external.test"].endswith(MESSAGE + SECOND_HALF)
    assert "mailgate stopped" in relay.process.log()
