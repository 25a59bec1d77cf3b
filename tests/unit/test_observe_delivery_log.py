"""The diagnostic log answers "what happened to this message" (issue 20 item 8): one line per
recipient outcome with next hop, remote MTA, delay and reply, by queue id."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from mailgate.core.clock import FakeClock
from mailgate.core.reply import Reply
from mailgate.core.status import Outcome, RecipientState
from mailgate.observe.delivery_log import DeliveryObserver
from mailgate.observe.translog import TransactionLog


def message(clock: FakeClock) -> SimpleNamespace:
    recipients = [SimpleNamespace(index=i, recipient=SimpleNamespace(address=f"r{i}@example.net")) for i in range(3)]
    return SimpleNamespace(queue_id="Q1", created=clock.now() - 12.5, recipients=recipients, size=300,
                           envelope=SimpleNamespace(sender_text="s@example.org"))


def test_each_outcome_has_a_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    observer = DeliveryObserver(TransactionLog(clock, "mx.test"), clock)
    outcomes = {
        0: Outcome(RecipientState.DELIVERED, Reply(250, "2.0.0", "ok id=7"), "dns; mx1.example.net"),
        1: Outcome(RecipientState.QUEUED, Reply(451, "4.3.0", "try later"), "dns; mx1.example.net"),
        2: Outcome(RecipientState.FAILED, Reply(550, "5.1.1", "no such user"), "dns; mx1.example.net"),
    }
    with caplog.at_level(logging.INFO, logger="mailgate.delivery"):
        observer.attempt(message(clock), SimpleNamespace(key="mx:example.net"), outcomes, "TLSv1.3", 0.2)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == ("Q1: to=<r0@example.net>, relay=mx:example.net (mx1.example.net), delay=12.5, "
                        "tls=TLSv1.3, status=sent (250 2.0.0 ok id=7)")
    assert "to=<r1@example.net>" in lines[1] and "status=deferred (451 4.3.0 try later)" in lines[1]
    assert "to=<r2@example.net>" in lines[2] and "status=bounced (550 5.1.1 no such user)" in lines[2]
    assert len(lines) == 3


def test_a_routing_failure_says_so(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    observer = DeliveryObserver(TransactionLog(clock, "mx.test"), clock)
    outcome = Outcome(RecipientState.QUEUED, Reply(451, "4.4.3", "DNS lookup failed"))
    with caplog.at_level(logging.INFO, logger="mailgate.delivery"):
        observer.attempt(message(clock), None, {0: outcome}, None, 0.0)
    assert "relay=none, delay=12.5, tls=none, status=deferred (451 4.4.3 DNS lookup failed)" in caplog.text
