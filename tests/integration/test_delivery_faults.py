"""The fault-injection matrix: SmtpTransport against a next hop that fails once, at one step.

Per scenario the hop (tests/support/fault_hop.py, strict like Postfix: a refused DATA keeps the
MAIL) answers 421, 451, 452, 550, 552 or 554, drops the connection, or stalls past the time-out
(or, in `test_dripped_reply`, sends its reply an octet at a time and never ends it) at one step: greeting, EHLO, STARTTLS, MAIL, each RCPT, DATA, end of data, RSET (reached through
a 451 at end of data) or QUIT; with and without PIPELINING and CHUNKING, on a fresh and on a
reused (pooled) connection, with one and with two recipients. Checked each time:
  * every recipient's outcome is the one RFC 5321 gives (`expected`);
  * the next, unrelated message to the same destination arrives intact, with its own sender,
    recipient and body;
  * nothing arrives empty or twice, and message A arrives exactly when (and to whom) the
    outcomes say it was delivered.
The client sends no BDAT (it does not implement RFC 3030), so CHUNKING offered must change
nothing; the hop answers BDAT with 502 and the test checks none was sent.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import AsyncIterator

import pytest

from mailgate.core.address import parse_mailbox
from mailgate.core.envelope import Recipient
from mailgate.core.status import RecipientState
from mailgate.delivery.request import Candidate, DeliveryRequest, HopPolicy, Route
from mailgate.delivery.transport import CommandTimeouts, SmtpTransport
from tests.support.fault_hop import DRIP, DROP, STALL, Fault, FaultHop

pytestmark = pytest.mark.timeout(60)

# Short time-outs keep the stalled scenarios quick; nothing here is a timed assertion.
TIMEOUT = 0.4
TIMEOUTS = CommandTimeouts(TIMEOUT, TIMEOUT, TIMEOUT, TIMEOUT, TIMEOUT, TIMEOUT)
ACTIONS = (421, 451, 452, 550, 552, 554, DROP, STALL)
SET_UP_STEPS = ("GREETING", "EHLO", "STARTTLS")
TRANSACTION_STEPS = ("MAIL", "RCPT1", "RCPT2", "DATA", "END_OF_DATA", "RSET", "QUIT")
DELIVERED, DEFERRED, FAILED = RecipientState.DELIVERED, RecipientState.QUEUED, RecipientState.FAILED

BODY_A = b"Subject: A\r\n\r\nThe body of message A.\r\n.leading dot\r\n"
BODY_B = b"Subject: B\r\n\r\nThe body of message B, unrelated.\r\n"
BODY_W = b"Subject: W\r\n\r\nWarm-up message.\r\n"


def scenarios():
    for step in SET_UP_STEPS + TRANSACTION_STEPS:
        for action, pipelining, chunking, reused, count in itertools.product(
            ACTIONS, (True, False), (True, False), (False, True), (1, 2)
        ):
            if reused and step in SET_UP_STEPS:
                continue  # a pooled connection has no set-up left to fail
            if step == "RCPT2" and count == 1:
                continue
            connection = "reused" if reused else "fresh"
            extensions = f"{'pipe' if pipelining else 'nopipe'}-{'chunk' if chunking else 'nochunk'}"
            yield pytest.param(step, action, pipelining, chunking, reused, count,
                               id=f"{step}-{action}-{extensions}-{connection}-{count}rcpt")


def expected(step: str, action: int | str, reused: bool, count: int) -> list[RecipientState]:
    """RFC 5321: 2yz delivered, 4yz deferred, 5yz failed (§4.2.1), per the command it answers."""
    everyone = lambda state: [state] * count  # noqa: E731
    no_reply = action in (DROP, STALL, DRIP)
    if step == "GREETING":
        return everyone(DEFERRED)  # §3.1: a refusing or silent server is as if unreachable
    if step == "EHLO":
        # §3.2: a 5yz to EHLO (an old server) means HELO, which the hop accepts; 421 closes.
        permanent = isinstance(action, int) and action >= 500
        return everyone(DELIVERED if permanent else DEFERRED)
    if step == "STARTTLS":
        # Policy "may": a refused STARTTLS leaves the session usable in clear text (RFC 3207 §4),
        # except after 421 (the server closes) or a dead connection.
        return everyone(DEFERRED if action == 421 or no_reply else DELIVERED)
    if step in ("QUIT",):
        return everyone(DELIVERED)
    if step == "RSET":
        return everyone(DEFERRED)  # reached through a 451 after the final dot
    if step == "MAIL" and reused and (no_reply or action == 421):
        return everyone(DELIVERED)  # a pooled connection dead at MAIL is replaced by a fresh one
    if no_reply or action == 421:
        return everyone(DEFERRED)  # §3.8 and §4.5.3.2: nothing final was said
    refusal = DEFERRED if action < 500 else FAILED
    if step.startswith("RCPT"):
        if action == 552:
            refusal = DEFERRED  # §4.5.3.1.10: a 552 to RCPT is treated as 452
        outcomes = everyone(DELIVERED)
        outcomes[int(step[-1]) - 1] = refusal
        return outcomes
    return everyone(refusal)  # MAIL, DATA, end of data


def faults_for(step: str, action: int | str) -> list[Fault]:
    if step.startswith("RCPT"):
        return [Fault("RCPT", action, occurrence=int(step[-1]))]
    if step == "RSET":
        return [Fault("END_OF_DATA", 451), Fault("RSET", action)]
    return [Fault(step, action)]


def body(data: bytes):
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    return chunks


async def send(transport: SmtpTransport, hop: FaultHop, sender: str, addresses: list[str], data: bytes):
    recipients = [(index, Recipient(parse_mailbox(address))) for index, address in enumerate(addresses)]
    route = Route("hop.test", (Candidate("hop.test", "127.0.0.1", hop.port),), HopPolicy(tls="may"))
    result = await transport.deliver(DeliveryRequest(route, sender, tuple(recipients), body(data), len(data)))
    return [result.outcomes[index].state for index, _ in recipients]


def server_tls(tls_files: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    return context


@pytest.mark.parametrize(("step", "action", "pipelining", "chunking", "reused", "count"), list(scenarios()))
def test_fault(step, action, pipelining, chunking, reused, count, tls_files):
    run_fault(step, action, pipelining, chunking, reused, count, tls_files)


DRIP_CASES = [
    pytest.param(step, reused, id=f"{step}-{'reused' if reused else 'fresh'}")
    for step in ("GREETING", "EHLO", "MAIL", "RCPT1", "DATA", "END_OF_DATA")
    for reused in (False, True)
    if not (reused and step in SET_UP_STEPS)  # a pooled connection has no set-up left to fail
]


@pytest.mark.parametrize(("step", "reused"), DRIP_CASES)
def test_dripped_reply(step, reused, tls_files):
    """A reply that keeps coming but never ends is bounded by the command's time-out as a whole,
    not restarted by each octet (RFC 5321 §4.5.3.2 times a reply, not a read)."""
    run_fault(step, DRIP, True, False, reused, 1, tls_files)


def run_fault(step, action, pipelining, chunking, reused, count, tls_files):
    tls = server_tls(tls_files) if step == "STARTTLS" else None
    a_recipients = [f"rcpt{number}@hop.test" for number in range(1, count + 1)]

    async def scenario():
        async with FaultHop(pipelining=pipelining, chunking=chunking, tls_context=tls) as hop:
            transport = SmtpTransport(command_timeouts=TIMEOUTS, connect_timeout=5, idle_timeout=30)
            try:
                if reused:
                    assert await send(transport, hop, "w@sender.test", ["w@hop.test"], BODY_W) == [DELIVERED]
                hop.arm(*faults_for(step, action))
                outcome_a = await send(transport, hop, "a@sender.test", a_recipients, BODY_A)
                if step == "QUIT":
                    await transport.close()  # QUITs the pooled connection: the fault fires
                outcome_b = await send(transport, hop, "b@sender.test", ["next@hop.test"], BODY_B)
            finally:
                await transport.close()
            return hop, outcome_a, outcome_b

    hop, outcome_a, outcome_b = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert outcome_a == expected(step, action, reused, count)
    assert outcome_b == [DELIVERED]
    by_sender = {"w@sender.test": BODY_W, "a@sender.test": BODY_A, "b@sender.test": BODY_B}
    for message in hop.accepted:
        assert message.body == by_sender[message.sender], "a message arrived with another's body"
    arrived_a = [message for message in hop.accepted if message.sender == "a@sender.test"]
    delivered_a = tuple(address for address, state in zip(a_recipients, outcome_a) if state is DELIVERED)
    assert [message.recipients for message in arrived_a] == ([delivered_a] if delivered_a else [])
    arrived_b = [message for message in hop.accepted if message.sender == "b@sender.test"]
    assert [message.recipients for message in arrived_b] == [("next@hop.test",)]
    assert "BDAT" not in hop.verbs
