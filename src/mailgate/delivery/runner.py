"""The queue runner: claims due messages, delivers them per next hop, records every outcome.

Owns: the delivery loop (woken at once by new mail, otherwise sleeping until the next due
retry), bounded concurrency, grouping a message's pending recipients by route (one transaction
per next hop), turning outcomes into queue updates (retry with backoff, expiry after the
maximum lifetime, ARCHITECTURE.md step 9) and handing failures and delays to the bouncer.
An attempt's outcome that cannot be saved (the store fails: a full disk, a lost database) is kept
in memory (`_Unsaved`) and saved again, with a growing pause, until it lands; meanwhile the
message is never attempted again, even if its lease ran out and it is claimed anew: a recipient
delivered but not yet recorded as delivered must not get the message twice (issue 21 item 2).
Must not: carry messages itself (a `delivery.request.Transport` does: SMTP or Maildir), parse DNS (routing) or build DSN text (dsn/).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailgate.core.clock import Clock
from mailgate.core.envelope import BodyType
from mailgate.core.reply import Reply
from mailgate.core.status import Outcome, RecipientState, classify
from mailgate.delivery.bouncer import Bouncer
from mailgate.delivery.request import DeliveryRequest, Route, Transport
from mailgate.delivery.routing import RouteError, Router
from mailgate.queue.backoff import RetrySchedule
from mailgate.queue.store import (
    CorruptBodyError,
    LeaseLostError,
    QueuedMessage,
    QueuedRecipient,
    QueueFilter,
    QueueStore,
    RecipientUpdate,
)

log = logging.getLogger("mailgate.delivery")
# A claim that failed (the cluster queue's database is down) is tried again after this long.
STORE_RETRY_S = 1.0

# On expiry the recipient fails with its own permanent reply: RFC 5321 §4.2.3 554 "Transaction
# failed" with RFC 3463 §3.5 X.4.7 "Delivery time expired"; the last transient reply (remote or
# local) stays in the text as the diagnostic. Never the last code plus 100: a 421 would become 521,
# which RFC 7504 reserves for "this host does not accept mail".
EXPIRED_CODE, EXPIRED = 554, "5.4.7"


# Pauses between attempts to save an outcome the store refused: doubling from the first to the last.
SAVE_RETRY_FIRST, SAVE_RETRY_LAST = 1.0, 60.0


@dataclass(frozen=True)
class RunnerSettings:
    workers: int  # delivery.workers: messages delivered at once
    save_retry: float = SAVE_RETRY_FIRST  # first pause before saving an unsaved outcome again


@dataclass
class _Unsaved:
    """One attempt's outcome not yet (fully) in the store, with the steps already done."""

    message: QueuedMessage
    updates: list[RecipientUpdate]
    attempted_at: float
    recorded: bool = False  # record() done (the bounce step follows it)
    delay_notified: bool | None = None  # the bouncer ran (its DSN is committed): never again


class DeliveryRunner:
    def __init__(
        self,
        store: QueueStore,
        router: Router,
        transport: Transport,
        bouncer: Bouncer,
        schedule: RetrySchedule,
        clock: Clock,
        settings: RunnerSettings,
        on_attempt: Callable[[QueuedMessage, Route | None, dict[int, Outcome], str | None, float], None] = (
            lambda *args: None
        ),
    ) -> None:
        self._store = store
        self._router = router
        self._transport = transport
        self._bouncer = bouncer
        self._schedule = schedule
        self._clock = clock
        self._settings = settings
        self._on_attempt = on_attempt
        self._wakeup = asyncio.Event()
        self._active: set[asyncio.Task] = set()
        self._reserved = 0  # slots promised to messages being committed for hand_off()
        self._full = False  # the last claim took every free slot: more may be due
        self._stopping = False
        self._rng = random.Random()
        self._unsaved: dict[str, _Unsaved] = {}  # queue id -> outcome the store has not taken yet
        self._saver: asyncio.Task | None = None

    def wake(self) -> None:
        """New mail was committed: look for due work now."""
        self._wakeup.set()

    def reserve(self) -> bool:
        """Promise a delivery slot to a message about to be committed with the store's
        commit_claimed(); False when every slot is taken (commit it for the runner to claim)."""
        if self._stopping or self._free_slots() <= 0:
            return False
        self._reserved += 1
        return True

    def cancel(self) -> None:
        """Give back a reserved slot: the commit failed."""
        self._reserved -= 1
        self._wakeup.set()

    def hand_off(self, message: QueuedMessage) -> None:
        """Deliver a message just committed with commit_claimed() in its reserved slot: no claim
        and no read-back. When stopping, its lease is returned by recover() at the next start."""
        self._reserved -= 1
        if not self._stopping:
            self._start(message)

    def _free_slots(self) -> int:
        return self._settings.workers - len(self._active) - self._reserved

    def _start(self, message: QueuedMessage) -> None:
        task = asyncio.create_task(self._deliver_guarded(message))
        self._active.add(task)
        task.add_done_callback(self._task_done)

    async def run(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            free = self._free_slots()
            if free <= 0:
                self._full = True
                await self._wait(None)  # every slot busy or promised: a finished task wakes us
                continue
            # Sessions may reserve slots while this claim is on its way, so the runner can end
            # up a few deliveries above `workers` for a moment.
            try:
                claimed = await self._store.claim_due(self._clock.now(), free)
                due = None if claimed else await self._store.next_due()
            except Exception as exc:  # the queue's database is unreachable: try again soon
                log.warning("cannot claim from the queue (retrying in %.0f s): %s", STORE_RETRY_S, exc)
                await self._wait(self._clock.now() + STORE_RETRY_S)
                continue
            for message in claimed:
                self._start(message)
            if claimed and len(claimed) == free:
                self._full = True
                await self._wait(None)  # full: wait for a slot (a finished task wakes us)
                continue
            if claimed:
                continue  # more may be due
            await self._wait(due)

    async def _wait(self, due: float | None) -> None:
        timeout = 60.0 if due is None else max(0.0, min(60.0, due - self._clock.now()))
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _task_done(self, task: asyncio.Task) -> None:
        self._active.discard(task)
        if self._full:  # a slot for the work the last claim had to leave behind
            self._full = False
            self._wakeup.set()

    async def stop(self, grace: float = 30.0) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._active:
            await asyncio.wait(self._active, timeout=grace)
        for task in list(self._active):
            task.cancel()  # its lease is returned by recover() at the next start
        if self._saver is not None:
            self._saver.cancel()
        await self.save_unsaved()  # a last try: what is still unsaved may be delivered again
        if self._unsaved:
            log.error("stopping with %d delivery outcome(s) unsaved: %s", len(self._unsaved), ", ".join(self._unsaved))

    @property
    def unsaved(self) -> list[str]:
        """Queue ids of messages whose last outcome the store has not taken yet."""
        return list(self._unsaved)

    async def save_unsaved(self) -> int:
        """Try once more to save every outcome the store refused; returns how many are left."""
        for queue_id, unsaved in list(self._unsaved.items()):
            try:
                await self._save(unsaved)
            except LeaseLostError as exc:  # another node took it over meanwhile: its outcome counts
                log.warning("outcome of %s not recorded: %s", queue_id, exc)
            except Exception as exc:
                log.warning("outcome of %s still not saved: %s", queue_id, exc)
                continue
            del self._unsaved[queue_id]
            log.info("outcome of %s saved after a failure", queue_id)
        return len(self._unsaved)

    async def _save_later(self) -> None:
        """Until every unsaved outcome has landed: wait, try again, wait twice as long."""
        pause = self._settings.save_retry
        while self._unsaved and not self._stopping:
            await asyncio.sleep(pause)
            if await self.save_unsaved():
                pause = min(pause * 2, max(SAVE_RETRY_LAST, self._settings.save_retry))
        self._saver = None

    async def _deliver_guarded(self, message: QueuedMessage) -> None:
        try:
            await self.deliver(message)
        except LeaseLostError as exc:  # a cluster node took the message over: its outcome counts
            log.warning("outcome of %s not recorded: %s", message.queue_id, exc)
        except CorruptBodyError as exc:  # no attempt can succeed: an admin has to look at it
            log.error("holding %s: %s", message.queue_id, exc)
            await self._store.hold(QueueFilter(queue_id=message.queue_id), f"damaged body: {exc}")
            await self._store.finish(message.queue_id)
        except Exception:  # a bug must not kill the runner; the lease returns at restart
            log.exception("delivery of %s failed unexpectedly", message.queue_id)

    async def deliver(self, message: QueuedMessage) -> None:
        """One attempt for every pending recipient of one claimed message."""
        if message.queue_id in self._unsaved:  # claimed again (its lease ran out): never resend
            await self.save_unsaved()
            return
        now = self._clock.now()
        groups: dict[str, list[QueuedRecipient]] = {}
        for recipient in message.pending:
            groups.setdefault(recipient.recipient.address.domain, []).append(recipient)
        by_route: dict[Route, list[QueuedRecipient]] = {}
        outcomes: dict[int, Outcome] = {}
        for domain, recipients in groups.items():
            try:
                route = await self._router.route(domain)
            except RouteError as exc:
                for recipient in recipients:
                    outcomes[recipient.index] = classify(exc.reply)
                self._on_attempt(message, None, {r.index: outcomes[r.index] for r in recipients}, None, 0.0)
                continue
            by_route.setdefault(route, []).extend(recipients)
        attempts = [self._attempt(message, route, recipients) for route, recipients in by_route.items()]
        if len(attempts) == 1:  # the common case: no task and no gathering future for it
            outcomes.update(await attempts[0])
        else:
            for result in await asyncio.gather(*attempts):
                outcomes.update(result)
        attempts = {r.index: r.attempts for r in message.recipients}
        updates = [self._update(message, index, outcome, attempts[index] + 1, now) for index, outcome in outcomes.items()]
        unsaved = _Unsaved(message, updates, now)
        try:
            await self._save(unsaved)
        except LeaseLostError:
            raise  # another node claimed it since: its outcome counts, ours is never saved
        except Exception:
            log.exception("outcome of %s not saved; kept and saved again later", message.queue_id)
            self._unsaved[message.queue_id] = unsaved
            if self._saver is None and not self._stopping:
                self._saver = asyncio.create_task(self._save_later())
            return
        if not all(update.state is RecipientState.DELIVERED for update in updates):
            self._wakeup.set()  # a retry is due later: the runner's sleep must end by then

    async def _save(self, unsaved: _Unsaved) -> None:
        """Record the outcome, bounce what failed, return the lease; each step done only once
        (a DSN is never made twice), resumed where it stopped when the store failed."""
        queue_id, updates = unsaved.message.queue_id, unsaved.updates
        if all(update.state is RecipientState.DELIVERED for update in updates):
            await self._store.finish(queue_id, updates=updates)  # the common case: one step
            return
        if not unsaved.recorded:
            await self._store.record(queue_id, updates)
            unsaved.recorded = True
        if unsaved.delay_notified is None:
            unsaved.delay_notified = await self._bouncer.after_attempt(unsaved.message, updates, unsaved.attempted_at)
        await self._store.finish(queue_id, delay_notified=unsaved.delay_notified)

    async def _attempt(
        self, message: QueuedMessage, route: Route, recipients: list[QueuedRecipient]
    ) -> dict[int, Outcome]:
        started = time.monotonic()
        request = DeliveryRequest(
            route,
            message.envelope.sender_text,
            tuple((r.index, r.recipient) for r in recipients),
            lambda: self._store.body_chunks(message.queue_id),
            size=message.size,
            smtputf8=message.envelope.smtputf8,
            eight_bit=message.envelope.body is not BodyType.SEVEN_BIT,
            ret=message.envelope.ret,
            envid=message.envelope.envid,
            crlf_clean=message.meta.crlf_clean,
        )
        result = await self._transport.deliver(request)
        self._on_attempt(message, route, result.outcomes, result.tls, time.monotonic() - started)
        return result.outcomes

    def _update(
        self, message: QueuedMessage, index: int, outcome: Outcome, attempts: int, now: float
    ) -> RecipientUpdate:
        """The saved result of this attempt (`attempts` counts it): retry time or expiry."""
        reply = outcome.reply
        state = outcome.state
        next_attempt = 0.0
        if state is RecipientState.QUEUED:
            if self._schedule.expired(message.created, now):
                state = RecipientState.FAILED
                last = " ".join(part for part in (str(reply.code), reply.enhanced, reply.text) if part)
                reply = Reply(EXPIRED_CODE, EXPIRED, f"Delivery time expired; last error: {last}")
            else:
                next_attempt = now + self._schedule.next_delay(attempts, self._rng)
        return RecipientUpdate(index, state, reply, next_attempt, outcome.remote_mta)
