"""SmtpTransport against capture servers on loopback: outcomes, TLS policy, pipelining, reuse."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable

import pytest

from mailgate.core.address import parse_mailbox
from mailgate.core.envelope import Notify, Recipient, Ret
from mailgate.core.reply import Reply
from mailgate.core.status import RecipientState
from mailgate.delivery.request import AttemptResult, Candidate, DeliveryRequest, HopPolicy, Route
from mailgate.delivery.transport import CommandTimeouts, SmtpTransport
from tests.conftest import free_port
from tests.support.capture_server import CaptureServer

pytestmark = pytest.mark.timeout(60)

FAST = CommandTimeouts(greeting=3, mail=3, rcpt=3, data_initiation=3, data_block=3, data_termination=3)
MESSAGE = b"From: a@example.org\r\nSubject: test\r\n\r\nHello.\r\n"


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def recipient(address: str, **kwargs) -> Recipient:
    return Recipient(parse_mailbox(address, smtputf8=True), **kwargs)


def chunks(data: bytes, size: int = 7) -> Callable[[], AsyncIterator[bytes]]:
    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(data), size):
            yield data[start : start + size]

    return body


def candidate(server: CaptureServer, host: str = "mx.test") -> Candidate:
    return Candidate(host, server.host, server.port)


async def send(
    transport: SmtpTransport,
    candidates: list[Candidate],
    addresses: list[str],
    *,
    policy: HopPolicy = HopPolicy(),
    body: bytes = MESSAGE,
    sender: str = "a@example.org",
    smtputf8: bool = False,
    eight_bit: bool = False,
    recipients: list[Recipient] | None = None,
    **params,
) -> AttemptResult:
    listed = recipients or [recipient(address) for address in addresses]
    route = Route("test", tuple(candidates), policy)
    request = DeliveryRequest(
        route, sender, tuple(enumerate(listed)), chunks(body), len(body), smtputf8, eight_bit, **params
    )
    return await transport.deliver(request)


def server_tls(tls_files: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    return context


def states(result: AttemptResult) -> list[RecipientState]:
    return [result.outcomes[index].state for index in sorted(result.outcomes)]


# --- one transaction, per-recipient outcomes -----------------------------------------------------
def test_mixed_recipient_replies_in_one_transaction():
    async def scenario():
        replies = {"b@example.com": Reply(450, "4.2.1", "mailbox busy"), "c@example.com": Reply(550, "5.1.1", "unknown")}
        async with CaptureServer(rcpt_replies=replies) as server:
            transport = SmtpTransport(command_timeouts=FAST)
            result = await send(transport, [candidate(server)], ["a@example.com", "b@example.com", "c@example.com"])
            await transport.close()
            return server, result

    server, result = run(scenario())
    assert states(result) == [RecipientState.DELIVERED, RecipientState.QUEUED, RecipientState.FAILED]
    assert result.outcomes[1].reply == Reply(450, "4.2.1", "mailbox busy")
    assert result.outcomes[2].reply == Reply(550, "5.1.1", "unknown")
    assert result.outcomes[0].reply == Reply(250, "2.0.0", "OK queued")
    assert result.outcomes[0].remote_mta == "dns; mx.test" and result.remote_mta == "mx.test"
    [transaction] = server.transactions
    assert transaction.mail_from == "a@example.org"
    assert transaction.rcpt_to == ["a@example.com", "b@example.com", "c@example.com"]
    assert transaction.accepted == ["a@example.com"]
    assert transaction.data == MESSAGE


def test_no_recipient_accepted_sends_no_data():
    for extensions in (("PIPELINING",), ()):

        async def scenario():
            refused = {"a@example.com": Reply(550, "5.1.1", "unknown")}
            async with CaptureServer(extensions=extensions, rcpt_replies=refused) as server:
                transport = SmtpTransport(command_timeouts=FAST)
                result = await send(transport, [candidate(server)], ["a@example.com"])
                await transport.close()
                return server, result

        server, result = run(scenario())
        assert states(result) == [RecipientState.FAILED]
        assert server.transactions[0].data is None
        verbs = [command.split()[0] for command in server.commands]
        if extensions:
            # Pipelined DATA refused by the server with 554; the MAIL it may still hold is reset.
            assert verbs[-3:] == ["DATA", "RSET", "QUIT"]
        else:
            assert "DATA" not in verbs and "RSET" in verbs


@pytest.mark.parametrize("extensions", [("PIPELINING",), ()])
def test_refused_mail_applies_to_every_recipient(extensions):
    async def scenario():
        async with CaptureServer(extensions=extensions, mail_replies=[Reply(451, "4.7.1", "greylisted")]) as server:
            transport = SmtpTransport(command_timeouts=FAST)
            result = await send(transport, [candidate(server)], ["a@example.com", "b@example.com"])
            later = await send(transport, [candidate(server)], ["a@example.com"])
            await transport.close()
            return server, result, later

    server, result, later = run(scenario())
    assert states(result) == [RecipientState.QUEUED, RecipientState.QUEUED]
    assert {outcome.reply for outcome in result.outcomes.values()} == {Reply(451, "4.7.1", "greylisted")}
    assert states(later) == [RecipientState.DELIVERED]
    assert server.connections == 1  # the session stayed in step and was reused


@pytest.mark.parametrize("extensions", [("PIPELINING",), ()])
def test_421_at_rcpt_defers_everyone(extensions):
    async def scenario():
        closing = {"b@example.com": Reply(421, "4.3.2", "shutting down")}
        async with CaptureServer(extensions=extensions, rcpt_replies=closing) as server:
            transport = SmtpTransport(command_timeouts=FAST)
            result = await send(transport, [candidate(server)], ["a@example.com", "b@example.com", "c@example.com"])
            await transport.close()
            return server, result

    server, result = run(scenario())
    assert states(result) == [RecipientState.QUEUED] * 3
    assert result.outcomes[0].reply == result.outcomes[1].reply == Reply(421, "4.3.2", "shutting down")
    assert server.completed == []


def test_data_reply_applies_to_all_accepted_recipients():
    async def scenario():
        async with CaptureServer(data_reply=Reply(554, "5.7.1", "spam")) as server:
            transport = SmtpTransport(command_timeouts=FAST)
            result = await send(transport, [candidate(server)], ["a@example.com", "b@example.com"])
            await transport.close()
            return result

    result = run(scenario())
    assert states(result) == [RecipientState.FAILED, RecipientState.FAILED]


# --- pipelining ----------------------------------------------------------------------------------
def test_pipelining_sends_mail_rcpts_and_data_in_one_write():
    async def scenario(extensions):
        async with CaptureServer(extensions=extensions) as server:
            transport = SmtpTransport(command_timeouts=FAST)
            result = await send(transport, [candidate(server)], ["a@example.com", "b@example.com"])
            await transport.close()
            return server, result

    server, result = run(scenario(("PIPELINING",)))
    assert states(result) == [RecipientState.DELIVERED] * 2
    assert ["MAIL", "RCPT", "RCPT", "DATA"] in server.batches

    server, result = run(scenario(()))
    assert states(result) == [RecipientState.DELIVERED] * 2
    envelope_batches = [batch for batch in server.batches if set(batch) & {"MAIL", "RCPT", "DATA"}]
    assert envelope_batches == [["MAIL"], ["RCPT"], ["RCPT"], ["DATA"]]  # one round trip each


# --- candidates ----------------------------------------------------------------------------------
def test_falls_back_to_second_candidate_when_first_refuses():
    async def scenario():
        dead = Candidate("mx1.test", "127.0.0.1", free_port())
        async with CaptureServer() as server:
            transport = SmtpTransport(command_timeouts=FAST)
            result = await send(transport, [dead, candidate(server, "mx2.test")], ["a@example.com"])
            await transport.close()
            return server, result

    server, result = run(scenario())
    assert states(result) == [RecipientState.DELIVERED]
    assert result.remote_mta == "mx2.test"
    assert len(server.completed) == 1


def test_all_candidates_refusing_defers_with_the_last_error():
    async def scenario(port):
        transport = SmtpTransport(command_timeouts=FAST)
        result = await send(transport, [Candidate("mx.test", "127.0.0.1", port)], ["a@example.com", "b@example.com"])
        await transport.close()
        return result

    port = free_port()
    result = run(scenario(port))
    assert states(result) == [RecipientState.QUEUED] * 2
    assert result.outcomes[0].reply == Reply(451, "4.4.1", f"connection refused by 127.0.0.1:{port}")
    assert result.remote_mta is None


def test_no_candidates_defers():
    result = run(send(SmtpTransport(), [], ["a@example.com"]))
    assert states(result) == [RecipientState.QUEUED]


@pytest.mark.parametrize("greeting", [Reply(554, "5.7.1", "go away"), Reply(421, "4.3.2", "busy")])
def test_refusing_greeting_moves_to_next_candidate(greeting):
    async def scenario():
        async with CaptureServer(greeting=greeting) as refusing, CaptureServer() as good:
            transport = SmtpTransport(command_timeouts=FAST)
            only_refusing = await send(transport, [candidate(refusing)], ["a@example.com"])
            both = await send(transport, [candidate(refusing), candidate(good)], ["a@example.com"])
            await transport.close()
            return only_refusing, both, good

    only_refusing, both, good = run(scenario())
    assert states(only_refusing) == [RecipientState.QUEUED]
    reply = only_refusing.outcomes[0].reply
    assert reply.code == 451 and greeting.text in reply.text and "mx.test" in reply.text
    assert states(both) == [RecipientState.DELIVERED] and len(good.completed) == 1


def test_slow_greeting_times_out_to_next_candidate():
    async def scenario():
        async with CaptureServer(delays={"GREETING": 2.0}) as slow, CaptureServer() as good:
            timeouts = CommandTimeouts(greeting=0.3, mail=3, rcpt=3, data_initiation=3, data_block=3, data_termination=3)
            transport = SmtpTransport(command_timeouts=timeouts)
            alone = await send(transport, [candidate(slow)], ["a@example.com"])
            both = await send(transport, [candidate(slow), candidate(good)], ["a@example.com"])
            await transport.close()
            return alone, both

    alone, both = run(scenario())
    assert alone.outcomes[0].reply.enhanced == "4.4.2" and alone.outcomes[0].state is RecipientState.QUEUED
    assert states(both) == [RecipientState.DELIVERED]


def test_slow_data_termination_defers_with_timeout():
    async def scenario():
        refused = {"b@example.com": Reply(550, "5.1.1", "unknown")}
        async with CaptureServer(delays={"END_OF_DATA": 2.0}, rcpt_replies=refused) as server:
            timeouts = CommandTimeouts(greeting=3, mail=3, rcpt=3, data_initiation=3, data_block=3, data_termination=0.3)
            transport = SmtpTransport(command_timeouts=timeouts)
            result = await send(transport, [candidate(server)], ["a@example.com", "b@example.com"])
            await transport.close()
            return result

    result = run(scenario())
    assert result.outcomes[0].state is RecipientState.QUEUED and result.outcomes[0].reply.enhanced == "4.4.2"
    assert result.outcomes[1].state is RecipientState.FAILED  # its RCPT reply stands


def test_connection_dropped_at_data_defers_accepted_recipients():
    async def scenario():
        async with CaptureServer(drop_at="END_OF_DATA") as server:
            transport = SmtpTransport(command_timeouts=FAST)
            result = await send(transport, [candidate(server)], ["a@example.com"])
            await transport.close()
            return result

    result = run(scenario())
    assert states(result) == [RecipientState.QUEUED]
    assert result.outcomes[0].reply.code == 451


def test_ehlo_refused_falls_back_to_helo():
    async def scenario():
        async with CaptureServer(ehlo_reply=Reply(502, "5.5.1", "what?")) as server:
            transport = SmtpTransport(command_timeouts=FAST)
            result = await send(transport, [candidate(server)], ["a@example.com"], eight_bit=True)
            await transport.close()
            return server, result

    server, result = run(scenario())
    assert states(result) == [RecipientState.DELIVERED]
    assert [command.split()[0] for command in server.commands[:2]] == ["EHLO", "HELO"]
    assert server.transactions[0].mail_params == []  # HELO: no extensions, so no parameters


# --- TLS -----------------------------------------------------------------------------------------
def tls_scenario(tls_files, policy: HopPolicy, *, host: str = "mx.test", offer: bool = True):
    async def scenario():
        context = server_tls(tls_files) if offer else None
        async with CaptureServer(tls_context=context) as server:
            transport = SmtpTransport(command_timeouts=FAST)
            result = await send(transport, [candidate(server, host)], ["a@example.com"], policy=policy)
            await transport.close()
            return server, result

    return run(scenario())


def test_starttls_may_uses_tls_when_offered(tls_files):
    server, result = tls_scenario(tls_files, HopPolicy(tls="may"))
    assert states(result) == [RecipientState.DELIVERED]
    assert result.tls is not None and result.tls.startswith("TLSv1.")
    assert server.transactions[0].tls
    assert [command.split()[0] for command in server.commands[:3]] == ["EHLO", "STARTTLS", "EHLO"]


def test_starttls_may_goes_clear_when_not_offered(tls_files):
    server, result = tls_scenario(tls_files, HopPolicy(tls="may"), offer=False)
    assert states(result) == [RecipientState.DELIVERED] and result.tls is None
    assert not server.transactions[0].tls


def test_tls_none_never_starts_tls(tls_files):
    server, result = tls_scenario(tls_files, HopPolicy(tls="none"))
    assert states(result) == [RecipientState.DELIVERED] and result.tls is None
    assert "STARTTLS" not in server.commands


def test_encrypt_needs_starttls(tls_files):
    server, result = tls_scenario(tls_files, HopPolicy(tls="encrypt"), offer=False)
    assert states(result) == [RecipientState.QUEUED]
    assert result.outcomes[0].reply.enhanced == "4.7.0"
    assert server.transactions == []


def test_encrypt_does_not_check_the_certificate(tls_files):
    server, result = tls_scenario(tls_files, HopPolicy(tls="encrypt"), host="wrong.test")
    assert states(result) == [RecipientState.DELIVERED] and result.tls is not None


def test_verify_checks_chain_and_name(tls_files):
    server, result = tls_scenario(tls_files, HopPolicy(tls="verify", ca_file=tls_files["ca"]))
    assert states(result) == [RecipientState.DELIVERED] and server.transactions[0].tls


def test_verify_with_wrong_name_defers(tls_files):
    server, result = tls_scenario(tls_files, HopPolicy(tls="verify", ca_file=tls_files["ca"]), host="wrong.test")
    assert states(result) == [RecipientState.QUEUED]
    assert result.outcomes[0].reply.enhanced == "4.7.5"
    assert server.transactions == []


def test_verify_with_untrusted_chain_defers(tls_files):
    server, result = tls_scenario(tls_files, HopPolicy(tls="verify"))  # system store only
    assert states(result) == [RecipientState.QUEUED] and server.transactions == []


def test_auth_after_starttls(tls_files):
    async def scenario(policy, password):
        async with CaptureServer(tls_context=server_tls(tls_files), auth_users={"app": password}) as server:
            transport = SmtpTransport(command_timeouts=FAST)
            result = await send(transport, [candidate(server)], ["a@example.com"], policy=policy)
            await transport.close()
            return server, result

    server, result = run(scenario(HopPolicy(tls="verify", ca_file=tls_files["ca"], auth=("app", "s3cret")), "s3cret"))
    assert states(result) == [RecipientState.DELIVERED] and server.authenticated == ["app"]

    server, result = run(scenario(HopPolicy(tls="may", auth=("app", "wrong")), "s3cret"))
    assert states(result) == [RecipientState.QUEUED] and result.outcomes[0].reply.enhanced == "4.7.8"

    server, result = run(scenario(HopPolicy(tls="none", auth=("app", "s3cret")), "s3cret"))
    assert states(result) == [RecipientState.QUEUED] and result.outcomes[0].reply.enhanced == "4.7.11"
    assert not any(command.startswith("AUTH") for command in server.commands)  # never in clear


# --- extensions ----------------------------------------------------------------------------------
def test_smtputf8_needed_but_absent_fails_permanently():
    async def scenario(extensions):
        async with CaptureServer(extensions=extensions) as server:
            transport = SmtpTransport(command_timeouts=FAST)
            result = await send(
                transport, [candidate(server)], ["jörg@example.com"], sender="ä@example.org", smtputf8=True
            )
            await transport.close()
            return server, result

    server, result = run(scenario(("PIPELINING",)))
    assert states(result) == [RecipientState.FAILED]
    assert (result.outcomes[0].reply.code, result.outcomes[0].reply.enhanced) == (553, "5.6.7")
    assert server.transactions == []

    server, result = run(scenario(("PIPELINING", "SMTPUTF8")))
    assert states(result) == [RecipientState.DELIVERED]
    assert server.transactions[0].mail_from == "ä@example.org"
    assert "SMTPUTF8" in server.transactions[0].mail_params


def test_size_announced_and_declared_limit_enforced():
    async def scenario(limit):
        async with CaptureServer(extensions=("SIZE",), size_limit=limit) as server:
            transport = SmtpTransport(command_timeouts=FAST)
            result = await send(transport, [candidate(server)], ["a@example.com", "b@example.com"])
            await transport.close()
            return server, result

    server, result = run(scenario(10))
    assert states(result) == [RecipientState.FAILED] * 2
    assert (result.outcomes[0].reply.code, result.outcomes[0].reply.enhanced) == (552, "5.3.4")
    assert server.commands[0].startswith("EHLO") and not any(c.startswith("MAIL") for c in server.commands)

    server, result = run(scenario(10_000))
    assert states(result) == [RecipientState.DELIVERED] * 2
    assert f"SIZE={len(MESSAGE)}" in server.transactions[0].mail_params


def test_8bitmime_and_dsn_parameters_passed_when_offered():
    listed = [recipient("a@example.com", notify=(Notify.SUCCESS, Notify.FAILURE), orcpt="rfc822;a@example.com")]

    async def scenario(extensions):
        async with CaptureServer(extensions=extensions) as server:
            transport = SmtpTransport(command_timeouts=FAST)
            await send(transport, [candidate(server)], [], recipients=listed, eight_bit=True, ret=Ret.HDRS, envid="q1 x")
            await transport.close()
            return server.transactions[0]

    offered = run(scenario(("8BITMIME", "DSN")))
    assert offered.mail_params == ["BODY=8BITMIME", "RET=HDRS", "ENVID=q1+20x"]
    assert offered.rcpt_params["a@example.com"] == ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;a@example.com"]
    bare = run(scenario(()))
    assert bare.mail_params == [] and bare.rcpt_params["a@example.com"] == []


# --- body ----------------------------------------------------------------------------------------
def test_bare_line_endings_converted_and_dots_stuffed():
    body = b"Subject: x\n\nline one\n.hidden dot\r.\rlast line without end"

    async def scenario():
        async with CaptureServer() as server:
            transport = SmtpTransport(command_timeouts=FAST)
            result = await send(transport, [candidate(server)], ["a@example.com"], body=body)
            await transport.close()
            return server, result

    server, result = run(scenario())
    assert states(result) == [RecipientState.DELIVERED]
    [transaction] = server.transactions
    assert not transaction.has_bare_line_endings
    assert transaction.wire_data == b"Subject: x\r\n\r\nline one\r\n..hidden dot\r\n..\r\nlast line without end\r\n"
    assert transaction.data == b"Subject: x\r\n\r\nline one\r\n.hidden dot\r\n.\r\nlast line without end\r\n"


# --- pooling and limits --------------------------------------------------------------------------
def test_connection_reused_for_sequential_messages_and_quit_on_close():
    async def scenario():
        async with CaptureServer() as server:
            transport = SmtpTransport(command_timeouts=FAST)
            results = [await send(transport, [candidate(server)], [f"r{n}@example.com"]) for n in range(3)]
            await transport.close()
            await asyncio.sleep(0.05)  # let the server read the QUIT
            return server, results

    server, results = run(scenario())
    assert all(states(result) == [RecipientState.DELIVERED] for result in results)
    assert server.connections == 1 and len(server.completed) == 3
    assert sum(command.startswith("EHLO") for command in server.commands) == 1
    assert server.commands[-1] == "QUIT"


def test_dead_pooled_connection_is_replaced_transparently():
    async def scenario():
        async with CaptureServer(close_after_transaction=True) as server:
            transport = SmtpTransport(command_timeouts=FAST)
            first = await send(transport, [candidate(server)], ["a@example.com"])
            second = await send(transport, [candidate(server)], ["b@example.com"])
            await transport.close()
            return server, first, second

    server, first, second = run(scenario())
    assert states(first) == states(second) == [RecipientState.DELIVERED]
    assert server.connections == 2 and len(server.completed) == 2


def test_pooled_connection_answering_421_is_replaced_once():
    async def scenario():
        closing = [Reply(250, "2.1.0", "OK"), Reply(421, "4.4.2", "idle too long")]
        async with CaptureServer(mail_replies=closing) as server:
            transport = SmtpTransport(command_timeouts=FAST)
            first = await send(transport, [candidate(server)], ["a@example.com"])
            second = await send(transport, [candidate(server)], ["b@example.com"])
            await transport.close()
            return server, first, second

    server, first, second = run(scenario())
    assert states(first) == states(second) == [RecipientState.DELIVERED]
    assert server.connections == 2
    assert [transaction.connection for transaction in server.completed] == [1, 2]


def test_pool_idle_timeout_quits_connection():
    async def scenario():
        async with CaptureServer() as server:
            transport = SmtpTransport(command_timeouts=FAST, idle_timeout=0.1)
            await send(transport, [candidate(server)], ["a@example.com"])
            for _ in range(100):  # bounded wait for the idle QUIT
                if server.commands[-1] == "QUIT":
                    break
                await asyncio.sleep(0.05)
            await send(transport, [candidate(server)], ["b@example.com"])
            await transport.close()
            return server

    server = run(scenario())
    assert server.connections == 2 and server.commands.count("QUIT") == 2


def test_per_destination_limit_bounds_concurrent_connections():
    async def scenario(limit):
        async with CaptureServer(delays={"END_OF_DATA": 0.2}) as server:
            transport = SmtpTransport(command_timeouts=FAST, max_per_destination=limit)
            sends = [send(transport, [candidate(server)], [f"r{n}@example.com"]) for n in range(4)]
            results = await asyncio.gather(*sends)
            await transport.close()
            return server, results

    server, results = run(scenario(1))
    assert all(states(result) == [RecipientState.DELIVERED] for result in results)
    assert server.max_active == 1 and server.connections == 1
    server, results = run(scenario(2))
    assert all(states(result) == [RecipientState.DELIVERED] for result in results)
    assert server.max_active == 2


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 not available")

    async def scenario():
        async with CaptureServer(host="::1") as server:
            transport = SmtpTransport(command_timeouts=FAST)
            result = await send(transport, [Candidate("mx.test", "::1", server.port)], ["a@example.com"])
            await transport.close()
            return result

    assert states(run(scenario())) == [RecipientState.DELIVERED]
