"""Delivery end to end inside one event loop: mailgate, capture servers and a real DNS zone.

Each test runs the real Application (listeners, SQLite store, runner, transport) and sends with
smtplib from a thread; next hops are capture servers on loopback, MX look-ups go to a DNS zone
served on loopback over real UDP/TCP sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import smtplib
import time
from pathlib import Path

import pytest

from mailgate.app import Application
from mailgate.cli.main import main as cli_main
from mailgate.config.loader import load_text
from mailgate.core.clock import FakeClock
from mailgate.core.reply import Reply
from mailgate.queue.store import MessageState, QueueFilter
from tests.conftest import free_port
from tests.support.capture_server import CaptureServer
from tests.support.config_text import hosted_domain, loopback_dns, relay_config
from tests.support.dns_server import LoopbackDnsServer

pytestmark = pytest.mark.timeout(120)


def config_text(tmp_path: Path, port: int, *, hosted_hop: str, dns_port: int, mx_port: int, extra: str = "") -> str:
    delivery = (f'[delivery]\nmx_port = {mx_port}\ntls = "none"\nretry_schedule = ["1s"]\nmax_retry_interval = "60s"\n'
                "delay_warning = 0\n")
    return relay_config(tmp_path / "spool", port, hosted_domain(hosted_hop, extra='tls = "none"\n'), delivery,
                        loopback_dns(dns_port), extra, hostname="relay.test", server="self_audit = false\n")


ZONE = {
    "remote.test": {"MX": [(10, "mx.remote.test")]},
    "mx.remote.test": {"A": ["127.0.0.1"]},
    "sender.test": {"MX": [(10, "mx.remote.test")]},
    "nullmx.test": {"MX": [(0, ".")]},
    "implicit.test": {"A": ["127.0.0.1"]},
}


@contextlib.asynccontextmanager
async def running(config: str, clock=None):
    app = Application(load_text(config, source="<test>"), clock=clock)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=2.0)


def send(port: int, sender: str, recipients: list[str], body: bytes, **options) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail(sender, recipients, body, **options)


async def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


MESSAGE = b"From: a@sender.test\r\nTo: b@hosted.test\r\nSubject: test\r\nMessage-ID: <m1@sender.test>\r\n\r\nHello.\r\n.leading dot\r\n"


@pytest.fixture()
def dns_zone():
    with LoopbackDnsServer(ZONE) as server:
        yield server


def test_hosted_domain_reaches_its_next_hop_byte_for_byte(tmp_path: Path, dns_zone) -> None:
    async def scenario() -> None:
        async with CaptureServer() as hop:
            port = free_port()
            config = config_text(tmp_path, port, hosted_hop=f"127.0.0.1:{hop.port}", dns_port=dns_zone.port, mx_port=1)
            async with running(config) as app:
                await asyncio.to_thread(send, port, "a@sender.test", ["b@hosted.test", "c@hosted.test"], MESSAGE)
                await wait_until(lambda: len(hop.completed) == 1)
                transaction = hop.completed[0]
                assert transaction.mail_from == "a@sender.test"
                assert sorted(transaction.accepted) == ["b@hosted.test", "c@hosted.test"]  # one transaction
                assert transaction.data.endswith(MESSAGE)
                assert transaction.data.startswith(b"Received: from ")
                assert not transaction.has_bare_line_endings
                assert await _eventually_empty(app)

    asyncio.run(scenario())


def test_a_message_the_worker_can_deliver_at_once_is_handed_off_without_a_claim(tmp_path: Path, dns_zone) -> None:
    async def scenario() -> None:
        async with CaptureServer() as hop:
            port = free_port()
            config = config_text(tmp_path, port, hosted_hop=f"127.0.0.1:{hop.port}", dns_port=dns_zone.port, mx_port=1)
            async with running(config) as app:
                claimed_ids: list[str] = []
                claim_due = app.store.claim_due

                async def counting_claim(now: float, limit: int):
                    claimed = await claim_due(now, limit)
                    claimed_ids.extend(message.queue_id for message in claimed)
                    return claimed

                app.store.claim_due = counting_claim
                for n in range(3):
                    await asyncio.to_thread(send, port, "a@sender.test", [f"r{n}@hosted.test"], MESSAGE)
                await wait_until(lambda: len(hop.completed) == 3)
                assert await _eventually_empty(app)
                assert claimed_ids == []  # each went from the session to the runner in memory

    asyncio.run(scenario())


def test_a_message_whose_body_fails_its_crc_is_held_and_never_completed(tmp_path: Path, dns_zone) -> None:
    clock = FakeClock(time.time())
    large = MESSAGE + b"".join(b"line %06d of a large body\r\n" % n for n in range(2000))  # > 16 KiB

    async def scenario() -> None:
        async with CaptureServer(rcpt_replies={"b@hosted.test": Reply(451, "4.3.0", "later")}) as hop:
            port = free_port()
            config = config_text(tmp_path, port, hosted_hop=f"127.0.0.1:{hop.port}", dns_port=dns_zone.port, mx_port=1)
            async with running(config, clock=clock) as app:
                await asyncio.to_thread(send, port, "a@sender.test", ["b@hosted.test"], large)
                await wait_until(lambda: len(hop.transactions) == 1)  # deferred by the 451
                (summary,) = await app.store.list(QueueFilter())
                queue_id = summary.queue_id
                app.store._hot.pop(queue_id)  # as after a restart: the body comes from its segment
                (segment,) = [path for path in (tmp_path / "spool" / "segments").iterdir()]
                with open(segment, "r+b") as file:
                    file.seek(8000)
                    file.write(b"\0" * 512)
                hop.rcpt_replies.clear()
                await retry_after(app, clock, 60)
                await wait_until(lambda: len(hop.transactions) == 2)
                for _ in range(100):
                    message = await app.store.get(queue_id)
                    if message is not None and message.held:
                        break
                    await asyncio.sleep(0.05)
                assert message is not None and message.held
                assert "damaged body" in message.meta.hold_reason
                assert hop.completed == []  # the final dot was never sent

    asyncio.run(scenario())


async def retry_after(app, clock: FakeClock, seconds: float) -> None:
    """Once the last attempt is recorded as deferred, move the clock on and retry at once."""
    for _ in range(200):
        if await app.store.list(QueueFilter(state=MessageState.DEFERRED)):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the attempt was never recorded as deferred")
    clock.advance(seconds)
    await app.store.reschedule(QueueFilter(), clock.now())
    app.runner.wake()


async def _eventually_empty(app) -> bool:
    for _ in range(100):
        if not await app.store.list(QueueFilter()):
            return True
        await asyncio.sleep(0.05)
    return False


def test_outbound_mail_goes_to_the_mx_from_dns(tmp_path: Path, dns_zone) -> None:
    async def scenario() -> None:
        async with CaptureServer() as mx:
            port = free_port()
            config = config_text(tmp_path, port, hosted_hop="127.0.0.1:1", dns_port=dns_zone.port, mx_port=mx.port)
            async with running(config):
                await asyncio.to_thread(send, port, "a@relay.test", ["x@remote.test", "y@implicit.test"], MESSAGE)
                await wait_until(lambda: len(mx.completed) == 2)
                assert sorted(r for t in mx.completed for r in t.accepted) == ["x@remote.test", "y@implicit.test"]
                assert dns_zone.queries  # the look-ups went over the wire

    asyncio.run(scenario())


def test_mixed_replies_deliver_defer_and_bounce_with_a_dsn(tmp_path: Path, dns_zone) -> None:
    async def scenario() -> None:
        replies = {
            "soft@hosted.test": Reply(451, "4.2.0", "mailbox busy"),
            "hard@hosted.test": Reply(550, "5.1.1", "no such user"),
        }
        async with CaptureServer(rcpt_replies=replies) as hop, CaptureServer() as sender_mx:
            port = free_port()
            config = config_text(tmp_path, port, hosted_hop=f"127.0.0.1:{hop.port}", dns_port=dns_zone.port, mx_port=sender_mx.port)
            async with running(config) as app:
                await asyncio.to_thread(
                    send, port, "a@sender.test", ["ok@hosted.test", "soft@hosted.test", "hard@hosted.test"], MESSAGE
                )
                await wait_until(lambda: len(sender_mx.completed) == 1)  # the DSN to the sender's MX
                assert hop.completed[0].accepted == ["ok@hosted.test"]
                dsn_transaction = sender_mx.completed[0]
                assert dsn_transaction.mail_from == ""  # RFC 3464: from the null sender
                assert dsn_transaction.accepted == ["a@sender.test"]
                report = email.message_from_bytes(dsn_transaction.data, policy=email.policy.default)
                assert report.get_content_type() == "multipart/report"
                assert report.get_param("report-type") == "delivery-status"
                status = report.get_payload()[1]
                assert status.get_content_type() == "message/delivery-status"
                fields = status.as_string()
                assert "Final-Recipient: rfc822; hard@hosted.test" in fields
                assert "Action: failed" in fields
                assert "Status: 5.1.1" in fields
                assert "Diagnostic-Code: smtp; 550 5.1.1 no such user" in fields
                assert "soft@hosted.test" not in fields and "ok@hosted.test" not in fields
                rows = await app.store.list(QueueFilter())
                assert len(rows) == 1
                states = {address: state.value for address, state, _ in rows[0].recipients}
                assert states["soft@hosted.test"] == "queued"
                # The retry comes after the 1 s schedule; the soft failure then succeeds.
                hop.rcpt_replies.pop("soft@hosted.test")
                await wait_until(lambda: any("soft@hosted.test" in t.accepted for t in hop.completed))
                assert await _eventually_empty(app)

    asyncio.run(scenario())


def test_null_mx_and_nxdomain_fail_permanently(tmp_path: Path, dns_zone) -> None:
    async def scenario() -> None:
        async with CaptureServer() as sender_mx:
            port = free_port()
            config = config_text(tmp_path, port, hosted_hop="127.0.0.1:1", dns_port=dns_zone.port, mx_port=sender_mx.port)
            async with running(config):
                await asyncio.to_thread(send, port, "a@sender.test", ["x@nullmx.test", "y@nonexistent.test"], MESSAGE)
                await wait_until(lambda: len(sender_mx.completed) >= 1)
                report = sender_mx.completed[0].data.decode()
                assert "Status: 5.1.10" in report  # RFC 7505 §4.2: 556 5.1.10
                assert "Status: 5.1.2" in report  # NXDOMAIN

    asyncio.run(scenario())


def test_expiry_bounces_after_the_maximum_lifetime(tmp_path: Path, dns_zone) -> None:
    clock = FakeClock(time.time())

    async def scenario() -> None:
        async with CaptureServer(rcpt_replies={"slow@hosted.test": Reply(451, "4.3.0", "try later")}) as hop, \
                CaptureServer() as sender_mx:
            port = free_port()
            config = config_text(
                tmp_path, port, hosted_hop=f"127.0.0.1:{hop.port}", dns_port=dns_zone.port,
                mx_port=sender_mx.port,
            ).replace('delay_warning = 0', 'delay_warning = 0\nmax_lifetime = "1h"')
            async with running(config, clock=clock) as app:
                await asyncio.to_thread(send, port, "a@sender.test", ["slow@hosted.test"], MESSAGE)
                await wait_until(lambda: len(hop.transactions) == 1)
                await retry_after(app, clock, 3601)
                await wait_until(lambda: len(sender_mx.completed) == 1)
                report = sender_mx.completed[0].data.decode()
                assert "Action: failed" in report
                assert "Status: 4.3.0" in report or "Status: 5.4.7" in report
                assert await _eventually_empty(app)

    asyncio.run(scenario())


def test_no_bounce_for_a_bounce(tmp_path: Path, dns_zone) -> None:
    async def scenario() -> None:
        async with CaptureServer(rcpt_replies={"hard@hosted.test": Reply(550, "5.1.1", "no")}) as hop, \
                CaptureServer() as sender_mx:
            port = free_port()
            config = config_text(tmp_path, port, hosted_hop=f"127.0.0.1:{hop.port}", dns_port=dns_zone.port, mx_port=sender_mx.port)
            async with running(config) as app:
                await asyncio.to_thread(send, port, "", ["hard@hosted.test"], MESSAGE)
                await wait_until(lambda: len(hop.transactions) == 1)
                assert await _eventually_empty(app)
                await asyncio.sleep(0.3)
                assert sender_mx.transactions == []

    asyncio.run(scenario())


def test_queue_commands_work_on_a_live_server(tmp_path: Path, dns_zone, capsys) -> None:
    async def scenario() -> None:
        async with CaptureServer() as sender_mx:
            port = free_port()
            # The hosted next hop refuses connections: mail stays queued.
            config = config_text(tmp_path, port, hosted_hop=f"127.0.0.1:{free_port()}", dns_port=dns_zone.port, mx_port=sender_mx.port)
            config_path = tmp_path / "mailgate.toml"
            config_path.write_text(config)
            async with running(config) as app:
                for index in range(3):
                    await asyncio.to_thread(send, port, f"s{index}@sender.test", ["b@hosted.test"], MESSAGE)

                def cli(*args: str) -> int:
                    return cli_main(["queue", *args[:1], "--config", str(config_path), *args[1:]])

                assert await asyncio.to_thread(cli, "list", "--json") == 0
                listing = capsys.readouterr().out
                assert listing.count('"queue_id"') == 3
                assert await asyncio.to_thread(cli, "hold", "--sender", "s1@") == 0
                held = await app.store.list(QueueFilter(state=MessageState.HELD))
                assert [row.sender for row in held] == ["s1@sender.test"]
                assert await asyncio.to_thread(cli, "release", held[0].queue_id) == 0
                assert await app.store.list(QueueFilter(state=MessageState.HELD)) == []
                assert await asyncio.to_thread(cli, "delete", "--sender", "s2@") == 0
                assert await asyncio.to_thread(cli, "bounce", "--sender", "s0@") == 0
                await wait_until(lambda: len(sender_mx.completed) == 1)
                assert "returned to sender by the mail administrator" in sender_mx.completed[0].data.decode().lower()
                remaining = await app.store.list(QueueFilter())
                assert [row.sender for row in remaining if row.sender] == ["s1@sender.test"]
                queue_id = remaining[0].queue_id if remaining[0].sender else remaining[-1].queue_id
                capsys.readouterr()
                assert await asyncio.to_thread(cli, "show", queue_id) == 0
                shown = capsys.readouterr().out
                assert "Subject: test" in shown

    asyncio.run(scenario())


def test_one_delayed_dsn_after_the_warning_time(tmp_path: Path, dns_zone) -> None:
    clock = FakeClock(time.time())

    async def scenario() -> None:
        async with CaptureServer(rcpt_replies={"slow@hosted.test": Reply(451, "4.3.0", "try later")}) as hop, \
                CaptureServer() as sender_mx:
            port = free_port()
            config = config_text(
                tmp_path, port, hosted_hop=f"127.0.0.1:{hop.port}", dns_port=dns_zone.port,
                mx_port=sender_mx.port,
            ).replace("delay_warning = 0", 'delay_warning = "1h"')
            async with running(config, clock=clock) as app:
                await asyncio.to_thread(send, port, "a@sender.test", ["slow@hosted.test"], MESSAGE)
                await wait_until(lambda: len(hop.transactions) == 1)
                await retry_after(app, clock, 3601)
                await wait_until(lambda: len(sender_mx.completed) == 1)
                report = email.message_from_bytes(sender_mx.completed[0].data, policy=email.policy.default)
                assert "Delayed" in report["Subject"]
                fields = report.get_payload()[1].as_string()
                assert "Action: delayed" in fields and "Status: 4.3.0" in fields
                assert "Will-Retry-Until:" in fields
                await wait_until(lambda: len(hop.transactions) == 2)
                await retry_after(app, clock, 3601)  # a further attempt: still deferred, no second report
                await wait_until(lambda: len(hop.transactions) == 3)
                await asyncio.sleep(0.5)
                assert len(sender_mx.completed) == 1
                rows = await app.store.list(QueueFilter())
                assert [row.sender for row in rows] == ["a@sender.test"]  # still queued

    asyncio.run(scenario())


def test_outbound_connections_come_from_the_bind_address(tmp_path: Path, dns_zone) -> None:
    """Issue 20 item 11: delivery.bind_address, and per next hop ([[domain]] bind_address)."""
    async def scenario() -> None:
        async with CaptureServer() as hop, CaptureServer() as mx:
            port = free_port()
            config = config_text(tmp_path, port, hosted_hop=f"127.0.0.1:{hop.port}", dns_port=dns_zone.port,
                                 mx_port=mx.port).replace(
                'tls = "none"\n\n[delivery]', 'tls = "none"\nbind_address = "127.0.0.4"\n\n[delivery]'
            ).replace("[delivery]\n", '[delivery]\nbind_address = "127.0.0.3"\n')
            async with running(config) as app:
                await asyncio.to_thread(send, port, "a@sender.test", ["b@hosted.test", "c@remote.test"], MESSAGE)
                await wait_until(lambda: len(hop.completed) == 1 and len(mx.completed) == 1)
                assert hop.peers == ["127.0.0.4"]  # the hosted domain's own source address
                assert mx.peers == ["127.0.0.3"]  # delivery.bind_address for everything else
                assert await _eventually_empty(app)

    asyncio.run(scenario())


def test_a_bind_address_that_is_not_ours_fails_the_check(tmp_path: Path, capsys) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text(config_text(tmp_path, free_port(), hosted_hop="127.0.0.1:1", dns_port=1, mx_port=1)
                      .replace("[delivery]\n", '[delivery]\nbind_address = "192.0.2.77"\n'))
    assert cli_main(["config", "check", str(config)]) == 2
    assert "delivery.bind_address: 192.0.2.77 is not an address of this host" in capsys.readouterr().err
