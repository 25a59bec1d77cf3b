"""Message rate limits and connection limits, driven through a real mailgate over SMTP
(SPEC §4, issue "Operations").

Limits under test, as app.py wires them from the configuration:
- `[limits] messages_per_client` / `messages_per_user` over `window`: MAIL FROM beyond the limit
  gets 450 4.7.1 (policy/limits.py; RFC 3463 §3.8), other clients and users are unaffected,
  trusted networks are exempt from the per-client limit;
- `[[listener]] max_connections_per_client`: one connection too many from one address gets
  421 4.7.0 before any greeting (RFC 5321 §4.2.3), another address is still served;
- `[[listener]] command_timeout`: an idle client gets 421 4.4.2 and is closed (RFC 5321
  §4.5.3.2.7), and the transaction it left open is not queued.
Each refusal is also checked in the JSON transaction log with the rule that decided it.
InProcessMailgate runs one Application with workers=1, so the limits apply as configured.
The untrusted clients here are 127.0.0.4 and 127.0.0.5, not 127.0.0.2: the start-up self-audit
(server.self_audit) speaks from 127.0.0.2 and its MAIL commands count against that address.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from mailgate.auth.store import FileUserStore
from mailgate.observe.jsonlog import log_files, read_records
from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import (
    EXTERNAL, HOSTED, RawSmtp, SmtpReply, client_context, config_text, queued,
)

pytestmark = pytest.mark.timeout(60)

UNTRUSTED_SOURCE = "127.0.0.4"  # trusted_networks holds 127.0.0.1/32 only
OTHER_SOURCE = "127.0.0.5"  # a second untrusted client address
MESSAGE = b"Subject: ops limits\r\n\r\nhello\r\n"
USER, PASSWORD = "carol", "limits test password"
OTHER_USER, OTHER_PASSWORD = "dave", "another test password"


def _limited_mailgate(tmp_path: Path, limits: str, tls_files: dict[str, str] | None = None,
                      mx_extra: str = "") -> InProcessMailgate:
    json_file = tmp_path / "log" / "tx.jsonl"
    text = config_text(tmp_path, tls_files, mx_extra=mx_extra)
    text += f'\n[limits]\n{limits}\nwindow = "1h"\n\n[log]\njson_file = "{json_file}"\n'
    return InProcessMailgate(text)


def _json_records(mg: InProcessMailgate) -> list[dict]:
    assert mg.app is not None and mg.app.log.flush()
    return list(read_records(log_files(mg.config.log.json_file)))


def _rules_refused(mg: InProcessMailgate, rule: str) -> list[dict]:
    """This test's refusals by `rule` (the self-audit's, from 127.0.0.2, left out)."""
    return [r for r in _json_records(mg) if r["event"] == "transaction.refused" and r.get("rule") == rule
            and r.get("client_ip") in (UNTRUSTED_SOURCE, OTHER_SOURCE)]


async def _transaction(client: RawSmtp, sender: str, recipient: str) -> list[SmtpReply]:
    """MAIL, RCPT, DATA and the message; stops at the first refusal (its reply is last)."""
    replies = [await client.command(f"MAIL FROM:<{sender}>")]
    if replies[-1].code != 250:
        return replies
    replies.append(await client.command(f"RCPT TO:<{recipient}>"))
    if replies[-1].code != 250:
        await client.command("RSET")
        return replies
    replies.append(await client.command("DATA"))
    await client.send(MESSAGE + b".\r\n")
    replies.append(await client.reply())
    return replies


async def _session(port: int, source: str | None, messages: int, recipient: str = f"user@{HOSTED}") -> list[str]:
    """`messages` transactions in one connection; the final reply of each as "code enhanced"."""
    client = await RawSmtp.connect(port, source=source)
    try:
        assert (await client.reply()).code == 220
        assert (await client.command("EHLO client.test")).code == 250
        outcomes = []
        for _ in range(messages):
            last = (await _transaction(client, "sender@external.test", recipient))[-1]
            outcomes.append(f"{last.code} {last.lines[0][:5]}")
        await client.command("QUIT")
        return outcomes
    finally:
        await client.close()


ACCEPTED = "250 2.0.0"
RATE_LIMITED = "450 4.7.1"


def test_per_client_rate_limit_refuses_the_fourth_message_and_spares_other_clients(tmp_path: Path) -> None:
    with _limited_mailgate(tmp_path, "messages_per_client = 3\nmessages_per_user = 0") as mg:
        port = mg.port("mx")
        first = asyncio.run(_session(port, UNTRUSTED_SOURCE, 4))
        # The limit is per address, not per connection: a new connection is refused as well.
        again = asyncio.run(_session(port, UNTRUSTED_SOURCE, 1))
        other = asyncio.run(_session(port, OTHER_SOURCE, 3))
        # Trusted networks (127.0.0.1/32 here) are exempt from the per-client limit.
        trusted = asyncio.run(_session(port, None, 5))
        refused = _rules_refused(mg, "rate.client")
        stored = queued(mg)

    assert first == [ACCEPTED] * 3 + [RATE_LIMITED]
    assert again == [RATE_LIMITED]
    assert other == [ACCEPTED] * 3
    assert trusted == [ACCEPTED] * 5
    assert len(stored) == 3 + 3 + 5
    assert [(r["client_ip"], r["stage"], r["reply_code"], r["reply_enhanced"]) for r in refused] == [
        (UNTRUSTED_SOURCE, "mail", 450, "4.7.1")
    ] * 2


async def _authenticated_session(port: int, ca: str, source: str, user: str, password: str, messages: int) -> list[str]:
    """STARTTLS, AUTH PLAIN, then `messages` relayed transactions; final reply of each."""
    client = await RawSmtp.connect(port, source=source)
    try:
        assert (await client.reply()).code == 220
        assert (await client.command("EHLO client.test")).code == 250
        assert (await client.command("STARTTLS")).code == 220
        await client.starttls(client_context(ca))
        assert (await client.command("EHLO client.test")).code == 250
        credentials = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        assert (await client.command(f"AUTH PLAIN {credentials}")).code == 235
        outcomes = []
        for _ in range(messages):
            last = (await _transaction(client, f"{user}@{HOSTED}", f"friend@{EXTERNAL}"))[-1]
            outcomes.append(f"{last.code} {last.lines[0][:5]}")
        await client.command("QUIT")
        return outcomes
    finally:
        await client.close()


def test_per_user_rate_limit_follows_the_user_across_connections_and_addresses(
    tmp_path: Path, tls_files: dict[str, str]
) -> None:
    users = FileUserStore(tmp_path / "users")
    users.add(USER, PASSWORD)
    users.add(OTHER_USER, OTHER_PASSWORD)
    with _limited_mailgate(tmp_path, "messages_per_client = 0\nmessages_per_user = 2", tls_files) as mg:
        port, ca = mg.port("submission"), tls_files["ca"]
        first = asyncio.run(_authenticated_session(port, ca, UNTRUSTED_SOURCE, USER, PASSWORD, 3))
        # The same user from another address is still over the limit ...
        moved = asyncio.run(_authenticated_session(port, ca, OTHER_SOURCE, USER, PASSWORD, 1))
        # ... while another user from the first address is not.
        other = asyncio.run(_authenticated_session(port, ca, UNTRUSTED_SOURCE, OTHER_USER, OTHER_PASSWORD, 2))
        refused = _rules_refused(mg, "rate.user")
        stored = queued(mg)

    assert first == [ACCEPTED] * 2 + [RATE_LIMITED]
    assert moved == [RATE_LIMITED]
    assert other == [ACCEPTED] * 2
    assert len(stored) == 4
    assert [(r["client_ip"], r["reply_code"]) for r in refused] == [(UNTRUSTED_SOURCE, 450), (OTHER_SOURCE, 450)]


def test_fourth_concurrent_connection_from_one_address_is_refused_and_others_are_served(tmp_path: Path) -> None:
    with _limited_mailgate(tmp_path, "messages_per_client = 0", mx_extra="max_connections_per_client = 3\n") as mg:
        port = mg.port("mx")

        async def scenario() -> tuple[list[int], str, bool, list[str], int]:
            held = []
            try:
                for _ in range(3):
                    client = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
                    held.append(client)
                greetings = [(await client.reply()).code for client in held]
                fourth = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
                refusal = await fourth.reply()
                closed = await fourth.at_eof()
                await fourth.close()
                # Another address is served while the first holds its three slots.
                served = await _session(port, OTHER_SOURCE, 1)
                # A slot given back is a slot free again for that address.
                await held.pop().close()
                for _ in range(50):  # bounded: the server notices the close asynchronously
                    again = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
                    code = (await again.reply()).code
                    await again.close()
                    if code == 220:
                        break
                    await asyncio.sleep(0.05)
                return greetings, str(refusal), closed, served, code
            finally:
                for client in held:
                    await client.close()

        greetings, refusal, closed, served, code_after_release = asyncio.run(scenario())
        records = _json_records(mg)

    assert greetings == [220, 220, 220]
    assert refusal == "421 4.7.0 Too many connections, try again later"
    assert closed
    assert served == [ACCEPTED]
    assert code_after_release == 220
    refused = [r for r in records if r["event"] == "connection.refused"]
    assert refused and all((r["client_ip"], r["reason"], r["reply_code"]) == (UNTRUSTED_SOURCE, "limit", 421)
                           for r in refused)


def test_idle_client_in_a_transaction_is_timed_out_and_nothing_is_queued(tmp_path: Path) -> None:
    with _limited_mailgate(tmp_path, "messages_per_client = 0", mx_extra="command_timeout = 1\n") as mg:
        port = mg.port("mx")

        async def scenario() -> tuple[SmtpReply, SmtpReply, bool]:
            client = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
            try:
                assert (await client.reply()).code == 220
                assert (await client.command("EHLO client.test")).code == 250
                mail = await client.command("MAIL FROM:<idle@external.test>")
                assert (await client.command(f"RCPT TO:<user@{HOSTED}>")).code == 250
                timeout = await client.reply()  # unprompted, after command_timeout of silence
                return mail, timeout, await client.at_eof()
            finally:
                await client.close()

        mail, timeout, closed = asyncio.run(scenario())
        records = _json_records(mg)
        stored = queued(mg)

    assert mail.code == 250
    assert str(timeout) == "421 4.4.2 Timeout exceeded, closing connection"  # RFC 5321 §4.5.3.2.7
    assert closed
    assert stored == []
    closes = [r for r in records if r["event"] == "connection.closed" and r["client_ip"] == UNTRUSTED_SOURCE]
    assert [r["reason"] for r in closes] == ["timeout"]
