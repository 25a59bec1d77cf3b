"""The runner's scheduling, retry, expiry and bounce logic, with no socket and no disk.

The seams: `MemoryQueueStore` for the queue, `FakeTransport` for SMTP and Maildir (answers
scripted per address), `StaticResolver` for DNS, `FakeClock` for time; the bouncer is the real
one, so DSNs are real RFC 3464 reports committed to the (memory) queue.
"""

from __future__ import annotations

import asyncio
import errno
import email
import email.utils
import re

import pytest

from mailgate.core.address import parse_mailbox
from mailgate.core.clock import FakeClock
from mailgate.core.envelope import Envelope, Notify, Recipient
from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState
from mailgate.delivery.bouncer import Bouncer
from mailgate.delivery.fake_transport import FakeTransport
from mailgate.delivery.maildir import MaildirTransport
from mailgate.delivery.request import DeliveryRequest, Route, RoutedTransport
from mailgate.delivery.routing import Router, RoutingSettings
from mailgate.delivery.runner import DeliveryRunner, RunnerSettings
from mailgate.dns.resolver import StaticResolver
from mailgate.queue.backoff import RetrySchedule
from mailgate.queue.memory_store import MemoryQueueStore
from mailgate.queue.store import LeaseLostError, MessageMeta, QueueFilter

pytestmark = pytest.mark.timeout(30)

ZONE = {
    "example.net": {"MX": [(10, "mx.example.net")]},
    "mx.example.net": {"A": ["192.0.2.25"]},
    "other.test": {"MX": [(10, "mx.other.test")]},
    "mx.other.test": {"A": ["192.0.2.26"]},
    "sender.test": {"MX": [(10, "mx.sender.test")]},
    "mx.sender.test": {"A": ["192.0.2.27"]},
}
BODY = b"From: a@sender.test\r\nSubject: hello\r\n\r\nThe body.\r\n"
LATER = Reply(451, "4.3.0", "Try later")
REFUSED = Reply(550, "5.1.1", "No such user")
RETRY_AFTER = 600.0
LIFETIME = 3600.0


class Harness:
    def __init__(self, scripts: dict[str, list[Reply]] | None = None, *, delay_warning: float = 0.0) -> None:
        self.clock = FakeClock()
        self.store = MemoryQueueStore(self.clock)
        self.transport = FakeTransport(scripts)
        # One schedule carries the lifetime to both the runner (expiry) and the bouncer (delay DSNs).
        schedule = RetrySchedule(steps=(RETRY_AFTER,), max_interval=RETRY_AFTER, max_lifetime=LIFETIME, jitter=0.0)
        bouncer = Bouncer(self.store, "relay.test", delay_warning, schedule)
        router = Router(RoutingSettings(hosted={}, helo_name="relay.test"), StaticResolver(ZONE))
        self.runner = DeliveryRunner(self.store, router, self.transport, bouncer, schedule, self.clock,
                                     RunnerSettings(workers=4))

    async def submit(self, sender: str | None, *recipients: Recipient | str) -> str:
        writer = self.store.begin()
        writer.write(BODY)
        envelope = Envelope(
            sender=parse_mailbox(sender) if sender else None,
            recipients=[r if isinstance(r, Recipient) else Recipient(parse_mailbox(r)) for r in recipients],
        )
        return await self.store.commit(writer, envelope, MessageMeta())

    async def attempt_due(self) -> int:
        """One attempt for every message due now; how many there were."""
        claimed = await self.store.claim_due(self.clock.now(), 100)
        for message in claimed:
            await self.runner.deliver(message)
        return len(claimed)

    async def dsns(self) -> list[email.message.Message]:
        """Reports from <>: those still queued and those the transport already carried."""
        bodies = [carried.body for carried in self.transport.carried if carried.sender == ""]
        for summary in await self.store.list(QueueFilter()):
            if summary.sender == "":
                bodies.append(b"".join([chunk async for chunk in self.store.body_chunks(summary.queue_id)]))
        parsed = [email.message_from_bytes(body) for body in bodies]
        return [message for message in parsed if message.get_content_type() == "multipart/report"]


def run(coroutine):
    return asyncio.run(coroutine)


def test_delivered_at_once_leaves_nothing_behind():
    async def scenario():
        harness = Harness()
        await harness.submit("a@sender.test", "b@example.net")
        assert await harness.attempt_due() == 1
        assert await harness.store.list(QueueFilter()) == []
        (carried,) = harness.transport.carried
        assert (carried.sender, carried.recipients, carried.body) == ("a@sender.test", ("b@example.net",), BODY)

    run(scenario())


def test_one_request_per_route_with_only_its_recipients():
    async def scenario():
        harness = Harness()
        await harness.submit("a@sender.test", "b@example.net", "c@other.test", "d@example.net")
        await harness.attempt_due()
        assert sorted(carried.recipients for carried in harness.transport.carried) == [
            ("b@example.net", "d@example.net"), ("c@other.test",)]

    run(scenario())


def test_deferred_recipient_waits_for_its_retry_then_is_delivered_without_a_dsn():
    async def scenario():
        harness = Harness({"b@example.net": [LATER, Reply(250, "2.0.0", "Ok")]})
        queue_id = await harness.submit("a@sender.test", "b@example.net", "c@example.net")
        await harness.attempt_due()
        message = await harness.store.get(queue_id)
        states = [(r.state, r.attempts, r.next_attempt) for r in message.recipients]
        assert states == [(RecipientState.QUEUED, 1, harness.clock.now() + RETRY_AFTER),
                          (RecipientState.DELIVERED, 1, 0.0)]
        harness.clock.advance(RETRY_AFTER - 1)
        assert await harness.attempt_due() == 0  # not due yet
        harness.clock.advance(1)
        assert await harness.attempt_due() == 1
        assert [carried.recipients for carried in harness.transport.carried] == [
            ("b@example.net", "c@example.net"), ("b@example.net",)]  # the delivered one is not sent again
        assert await harness.store.get(queue_id) is None
        assert await harness.dsns() == []  # RFC 3461: nothing to report for a delivery

    run(scenario())


def test_permanent_failure_bounces_once_to_the_sender():
    async def scenario():
        harness = Harness({"b@example.net": [REFUSED]})
        await harness.submit("a@sender.test", "b@example.net", "c@example.net")
        await harness.attempt_due()
        (dsn,) = await harness.dsns()
        assert dsn.get_content_type() == "multipart/report"
        assert "b@example.net" in dsn.as_string() and "c@example.net" not in dsn.as_string()
        (summary,) = await harness.store.list(QueueFilter())  # only the DSN is left
        assert summary.recipients[0][0] == "a@sender.test"
        await harness.attempt_due()  # the DSN goes out from <> to the sender's MX
        assert harness.transport.carried[-1].sender == "" and harness.transport.carried[-1].recipients == (
            "a@sender.test",)
        assert await harness.store.list(QueueFilter()) == []

    run(scenario())


@pytest.mark.parametrize("sender, notify", [(None, None), ("a@sender.test", (Notify.NEVER,)),
                                            ("a@sender.test", (Notify.DELAY,))])
def test_no_dsn_where_rfc_3461_says_none(sender, notify):
    async def scenario():
        harness = Harness({"b@example.net": [REFUSED]})
        recipient = Recipient(parse_mailbox("b@example.net"), notify=notify) if notify else "b@example.net"
        await harness.submit(sender, recipient)
        await harness.attempt_due()
        assert await harness.dsns() == []
        assert await harness.store.list(QueueFilter()) == []

    run(scenario())


def test_deferred_past_the_maximum_lifetime_expires_with_a_dsn():
    async def scenario():
        harness = Harness({"b@example.net": [LATER]})
        queue_id = await harness.submit("a@sender.test", "b@example.net")
        attempts = 0
        while await harness.store.get(queue_id) is not None and attempts < 20:
            attempts += await harness.attempt_due()
            harness.clock.advance(RETRY_AFTER)
        assert attempts == LIFETIME / RETRY_AFTER + 1  # the attempt at the lifetime's end fails
        (dsn,) = await harness.dsns()
        assert "5.4.7" in dsn.as_string() and "451" in dsn.as_string()  # RFC 3463: delivery time expired

    run(scenario())


@pytest.mark.parametrize("last", [Reply(421, "4.4.2", "Timeout, closing"), Reply(450, "", "Mailbox busy")])
def test_expiry_fails_with_554_5_4_7_and_keeps_the_last_reply_as_diagnostic(last):
    """RFC 7504 reserves 521 (a 421 plus 100 is not an expiry code); RFC 3463 X.4.7."""
    async def scenario():
        harness = Harness({"b@example.net": [last]})
        queue_id = await harness.submit("a@sender.test", "b@example.net")
        for _ in range(20):
            if await harness.store.get(queue_id) is None:
                break
            await harness.attempt_due()
            harness.clock.advance(RETRY_AFTER)
        (dsn,) = await harness.dsns()
        text = dsn.as_string().replace("\n ", " ")  # RFC 5322 §2.2.3: unfold
        last_text = " ".join(part for part in (str(last.code), last.enhanced, last.text) if part)
        assert f"Diagnostic-Code: smtp; 554 5.4.7 Delivery time expired; last error: {last_text}" in text
        assert "Status: 5.4.7" in text
        assert "521" not in text

    run(scenario())


def test_a_delay_warning_goes_out_once():
    async def scenario():
        harness = Harness({"b@example.net": [LATER]}, delay_warning=RETRY_AFTER * 2)
        queue_id = await harness.submit("a@sender.test", "b@example.net")
        for _ in range(4):
            await harness.attempt_due()
            harness.clock.advance(RETRY_AFTER)
        (warning,) = await harness.dsns()
        assert "Action: delayed" in warning.as_string()
        assert (await harness.store.get(queue_id)).recipients[0].state is RecipientState.QUEUED

    run(scenario())


def test_the_delay_warning_promises_the_moment_the_runner_gives_up():
    # One lifetime, one carrier: the Will-Retry-Until a delay DSN announces (RFC 3464 §2.3.4) is
    # the instant the runner expires the recipient, not a second copy of the setting.
    async def scenario():
        harness = Harness({"b@example.net": [LATER] * 10}, delay_warning=RETRY_AFTER)
        queue_id = await harness.submit("a@sender.test", "b@example.net")
        created = (await harness.store.get(queue_id)).created
        while harness.clock.now() < created + LIFETIME:
            assert (await harness.store.get(queue_id)).recipients[0].state is RecipientState.QUEUED
            await harness.attempt_due()
            harness.clock.advance(RETRY_AFTER)
        (warning,) = await harness.dsns()
        (promised,) = re.findall(r"Will-Retry-Until: (.+)", warning.as_string())
        assert email.utils.parsedate_to_datetime(promised).timestamp() == created + LIFETIME == harness.clock.now()
        await harness.attempt_due()  # the promised instant: the runner gives up now
        assert (await harness.store.get(queue_id)) is None or (
            (await harness.store.get(queue_id)).recipients[0].state is RecipientState.FAILED)
        failure = [dsn for dsn in await harness.dsns() if "Action: failed" in dsn.as_string()]
        assert len(failure) == 1 and "Status: 5.4.7" in failure[0].as_string()

    run(scenario())


def test_the_running_loop_delivers_new_mail_when_woken():
    async def scenario():
        harness = Harness()
        loop_task = asyncio.create_task(harness.runner.run())
        try:
            await harness.submit("a@sender.test", "b@example.net")
            harness.runner.wake()
            for _ in range(200):  # bounded: the loop claims and delivers on its own
                if await harness.store.list(QueueFilter()) == []:
                    break
                await asyncio.sleep(0.01)
            assert [carried.recipients for carried in harness.transport.carried] == [("b@example.net",)]
        finally:
            await harness.runner.stop(grace=1.0)
            loop_task.cancel()
            await asyncio.gather(loop_task, return_exceptions=True)

    run(scenario())


def test_routed_transport_sends_maildir_routes_to_the_maildir_and_the_rest_to_smtp(tmp_path):
    async def body():
        yield BODY

    async def scenario():
        smtp = FakeTransport()
        transport = RoutedTransport(smtp, MaildirTransport())
        recipients = ((0, Recipient(parse_mailbox("b@example.net"))),)
        local = await transport.deliver(DeliveryRequest(Route("local", maildir=str(tmp_path)), "a@sender.test",
                                                        recipients, body, len(BODY)))
        remote = await transport.deliver(DeliveryRequest(Route("mx:example.net"), "a@sender.test",
                                                         recipients, body, len(BODY)))
        await transport.close()
        return smtp, local, remote

    smtp, local, remote = run(scenario())
    assert local.outcomes[0].state is remote.outcomes[0].state is RecipientState.DELIVERED
    (stored,) = (tmp_path / "new").iterdir()
    assert stored.read_bytes() == b"Return-Path: <a@sender.test>\r\nDelivered-To: b@example.net\r\n" + BODY
    assert [carried.route_key for carried in smtp.carried] == ["mx:example.net"] and smtp.closed


# --- outcomes the store cannot save (issue 21 item 2: a full disk) --------------------------------
class FullDiskStore(MemoryQueueStore):
    """The memory store, whose record() and finish() fail with ENOSPC as often as `failures` says."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.failures = {"record": 0, "finish": 0}

    def _maybe_fail(self, step: str) -> None:
        if self.failures[step] > 0:
            self.failures[step] -= 1
            raise OSError(errno.ENOSPC, "database or disk is full")

    async def record(self, queue_id, updates):
        self._maybe_fail("record")
        await super().record(queue_id, updates)

    async def finish(self, queue_id, **kwargs):
        self._maybe_fail("finish")
        return await super().finish(queue_id, **kwargs)


def full_disk_harness(scripts=None) -> Harness:
    harness = Harness(scripts)
    harness.store = FullDiskStore(harness.clock)
    harness.runner._store = harness.store
    harness.runner._bouncer = Bouncer(harness.store, "relay.test", 0.0, harness.runner._schedule)
    return harness


async def attempt_due_as_the_runner_does(harness: Harness) -> int:
    """Like Harness.attempt_due, but an exception is logged and swallowed as the runner's guard
    does (the message then stays leased until its lease runs out or a restart returns it)."""
    claimed = await harness.store.claim_due(harness.clock.now(), 100)
    for message in claimed:
        try:
            await harness.runner.deliver(message)
        except Exception:
            pass
    return len(claimed)


def test_a_delivery_whose_outcome_cannot_be_saved_is_saved_later_and_never_sent_twice():
    async def scenario():
        harness = full_disk_harness()
        queue_id = await harness.submit("a@sender.test", "b@example.net")
        harness.store.failures["finish"] = 3  # the disk is full for three saves
        assert await attempt_due_as_the_runner_does(harness) == 1
        assert len(harness.transport.carried) == 1
        # The lease runs out: the message is claimable again.
        await harness.store.recover()
        assert await attempt_due_as_the_runner_does(harness) == 1  # claimed, one save tried
        assert len(harness.transport.carried) == 1  # ... but never sent again
        assert harness.runner.unsaved == [queue_id]
        assert await harness.runner.save_unsaved() == 1  # the third failure
        assert await harness.store.get(queue_id) is not None
        assert await harness.runner.save_unsaved() == 0  # space is back: it lands
        assert await harness.store.get(queue_id) is None
        assert await attempt_due_as_the_runner_does(harness) == 0
        assert len(harness.transport.carried) == 1

    run(scenario())


def test_a_failed_recipient_whose_finish_fails_gets_exactly_one_dsn():
    async def scenario():
        harness = full_disk_harness({"b@example.net": [REFUSED]})
        queue_id = await harness.submit("a@sender.test", "b@example.net")
        harness.store.failures.update(record=1, finish=1)
        await attempt_due_as_the_runner_does(harness)  # record fails
        assert await harness.runner.save_unsaved() == 1  # record lands, DSN made, finish fails
        assert await harness.runner.save_unsaved() == 0  # finish lands
        assert await harness.store.get(queue_id) is None
        for _ in range(3):
            await attempt_due_as_the_runner_does(harness)  # the DSN is delivered
        assert len(await harness.dsns()) == 1
        recipients = [carried.recipients for carried in harness.transport.carried]
        assert recipients.count(("b@example.net",)) == 1

    run(scenario())


def test_unsaved_outcomes_are_saved_by_the_runner_itself():
    async def scenario():
        harness = full_disk_harness()
        harness.runner._settings = RunnerSettings(workers=4, save_retry=0.01)
        queue_id = await harness.submit("a@sender.test", "b@example.net")
        harness.store.failures["finish"] = 4
        await attempt_due_as_the_runner_does(harness)
        for _ in range(1000):  # bounded: the runner's own retries (0.01 s, doubling) land it
            if await harness.store.get(queue_id) is None:
                break
            await asyncio.sleep(0.01)
        assert await harness.store.get(queue_id) is None and harness.runner.unsaved == []
        assert len(harness.transport.carried) == 1

    run(scenario())


def test_an_outcome_refused_because_another_node_took_the_message_over_is_not_kept():
    """LeaseLostError (a cluster store): the newer claim's outcome counts; saving ours again and
    again would never land."""
    async def scenario():
        harness = full_disk_harness()
        queue_id = await harness.submit("a@sender.test", "b@example.net")

        async def taken_over(queue_id, **kwargs):
            raise LeaseLostError(f"{queue_id} was claimed again")

        harness.store.finish = taken_over
        await attempt_due_as_the_runner_does(harness)
        assert harness.runner.unsaved == []
        assert len(harness.transport.carried) == 1

    run(scenario())


def test_an_unsaved_outcome_is_dropped_when_the_message_was_taken_over_meanwhile():
    async def scenario():
        harness = full_disk_harness()
        queue_id = await harness.submit("a@sender.test", "b@example.net")
        harness.store.failures["finish"] = 1
        await attempt_due_as_the_runner_does(harness)
        assert harness.runner.unsaved == [queue_id]

        async def taken_over(queue_id, **kwargs):
            raise LeaseLostError(f"{queue_id} was claimed again")

        harness.store.finish = taken_over
        assert await harness.runner.save_unsaved() == 0

    run(scenario())
