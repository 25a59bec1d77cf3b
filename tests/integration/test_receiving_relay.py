"""Relaying over a real connection (SPEC R1-R3, R5) and the start-up refusals of open-relay and
broken-TLS configurations.

Every form of the relay-trick table (policy/tricks.py: nmap's sixteen and the rest) is sent by an
untrusted client (127.0.0.2; only 127.0.0.1/32 is trusted): RCPT must be refused and nothing
queued. The trusted client relays, and anyone may send to the hosted domain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mailgate.app import Application
from mailgate.app_config import StartupError
from mailgate.config.loader import ConfigError, load_text
from mailgate.policy.tricks import NMAP, TRICKS, RenderedTrick, render_all
from tests.conftest import free_port
from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import (
    EXTERNAL, HOSTED, HOSTNAME, UNTRUSTED_SOURCE, RawSmtp, config_text, queued,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def mailgate(tmp_path: Path) -> Iterator[InProcessMailgate]:
    with InProcessMailgate(config_text(tmp_path)) as mg:
        yield mg


async def _try_form(port: int, form: RenderedTrick) -> tuple:
    client = await RawSmtp.connect(port, source=UNTRUSTED_SOURCE)
    await client.reply()
    await client.command("EHLO relaytest.example")
    utf8 = " SMTPUTF8" if form.smtputf8 else ""
    mail = await client.command(f"MAIL FROM:{form.mail_from}{utf8}")
    rcpt = await client.command(f"RCPT TO:{form.rcpt_to}")
    data = await client.command("DATA")
    await client.command("QUIT")
    await client.close()
    return mail, rcpt, data


async def _try_every_form(port: int, forms: list[RenderedTrick]) -> dict:
    return {form.name: await _try_form(port, form) for form in forms}


def test_every_relay_trick_is_refused_at_rcpt(mailgate: InProcessMailgate) -> None:
    forms = render_all(target=EXTERNAL, relay_host=HOSTNAME, relay_ip="127.0.0.1", hosted=HOSTED)
    assert len(forms) == len(TRICKS) >= 45
    assert sum(trick.origin == NMAP for trick in TRICKS) == 16

    results = asyncio.run(_try_every_form(mailgate.port("mx"), forms))

    failures = []
    for form in forms:
        mail, rcpt, data = results[form.name]
        if mail.code != 250:
            failures.append(f"{form.name}: MAIL FROM:{form.mail_from} -> {mail} (must reach RCPT)")
        if rcpt.code // 100 != 5:
            failures.append(f"{form.name}: RCPT TO:{form.rcpt_to} -> {rcpt}")
        if data.code != 503:  # no recipient was accepted (RFC 5321 §4.1.4)
            failures.append(f"{form.name}: DATA -> {data}")
    assert not failures, "\n".join(failures)
    assert queued(mailgate) == []


async def _send(port: int, source: str, recipient: str) -> list:
    client = await RawSmtp.connect(port, source=source)
    await client.reply()
    await client.command("EHLO client.test")
    replies = [
        await client.command(f"MAIL FROM:<sender@{HOSTED}>"),
        await client.command(f"RCPT TO:<{recipient}>"),
        await client.command("DATA"),
    ]
    if replies[-1].code == 354:
        await client.send(b"Subject: relay\r\n\r\nbody\r\n.\r\n")
        replies.append(await client.reply())
    await client.close()
    return replies


def test_trusted_network_relays_to_an_external_domain(mailgate: InProcessMailgate) -> None:
    replies = asyncio.run(_send(mailgate.port("mx"), "127.0.0.1", f"friend@{EXTERNAL}"))

    assert [r.code for r in replies] == [250, 250, 354, 250]
    [summary] = queued(mailgate)
    assert [r[0] for r in summary.recipients] == [f"friend@{EXTERNAL}"]


def test_untrusted_client_cannot_relay_to_an_external_domain(mailgate: InProcessMailgate) -> None:
    replies = asyncio.run(_send(mailgate.port("mx"), UNTRUSTED_SOURCE, f"friend@{EXTERNAL}"))

    assert [r.code for r in replies] == [250, 550, 503]
    assert replies[1].text == f"5.7.1 Unable to relay for <friend@{EXTERNAL}>"  # SPEC R3
    assert queued(mailgate) == []


@pytest.mark.parametrize("source", ["127.0.0.1", UNTRUSTED_SOURCE])
def test_anyone_may_send_to_a_hosted_domain(mailgate: InProcessMailgate, source: str) -> None:
    replies = asyncio.run(_send(mailgate.port("mx"), source, f"User@{HOSTED.upper()}"))

    assert [r.code for r in replies] == [250, 250, 354, 250]  # SPEC R1
    assert len(queued(mailgate)) == 1


# --- start-up refusals ---------------------------------------------------------------------------

def _base_config(tmp_path: Path, relay: str, domain: str = HOSTED, listener_tls: str = 'tls = "none"') -> str:
    return f"""
[server]
spool_dir = "{tmp_path / 'spool'}"
users_file = "{tmp_path / 'users'}"

[[listener]]
name = "mx"
address = "127.0.0.1:{free_port()}"
{listener_tls}

[relay]
{relay}

[[domain]]
name = "{domain}"
next_hop = ["127.0.0.1:{free_port()}"]
"""


OPEN_RELAYS = [
    pytest.param('trusted_networks = ["0.0.0.0/0"]', HOSTED, "0.0.0.0/0", id="trusted-any-ipv4"),
    pytest.param('trusted_networks = ["::/0"]', HOSTED, "::/0", id="trusted-any-ipv6"),
    pytest.param('trusted_networks = ["::ffff:0:0/96"]', HOSTED, "(= 0.0.0.0/0)", id="trusted-mapped-any"),
    pytest.param("", ".test", "domain[0].name", id="hosted-every-domain-under-a-tld"),
]


@pytest.mark.parametrize("relay, domain, named", OPEN_RELAYS)
def test_open_relay_configuration_is_refused_at_start_up(
    tmp_path: Path, relay: str, domain: str, named: str
) -> None:
    config = load_text(_base_config(tmp_path, relay, domain))
    with pytest.raises(StartupError) as refused:
        Application(config)
    assert named in str(refused.value)
    assert "acknowledge_open_relay" in str(refused.value)


@pytest.mark.parametrize("relay, domain, named", OPEN_RELAYS)
def test_open_relay_runs_when_acknowledged(tmp_path: Path, relay: str, domain: str, named: str) -> None:
    text = _base_config(tmp_path, relay + "\nacknowledge_open_relay = true", domain)
    assert Application(load_text(text)).reception.policy is not None


def test_star_hosted_domain_is_refused_even_when_acknowledged(tmp_path: Path) -> None:
    text = _base_config(tmp_path, "acknowledge_open_relay = true", "*")
    with pytest.raises(ConfigError) as refused:
        Application(load_text(text))
    assert "domain[0].name" in str(refused.value)


def test_missing_certificate_file_is_named(tmp_path: Path, tls_files: dict[str, str]) -> None:
    missing = tmp_path / "nowhere.pem"
    tls = f'cert_file = "{missing}"\nkey_file = "{tls_files["key"]}"'
    with pytest.raises(StartupError) as refused:
        Application(load_text(_base_config(tmp_path, "", listener_tls=tls)))
    assert str(refused.value) == f"listener[0].cert_file: {missing}: no such file"


def test_key_not_matching_the_certificate_is_named(tmp_path: Path, tls_files: dict[str, str]) -> None:
    other = trustme.CA().issue_cert("other.test")
    other_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(other_key))
    tls = f'cert_file = "{tls_files["cert"]}"\nkey_file = "{other_key}"'
    with pytest.raises(StartupError) as refused:
        Application(load_text(_base_config(tmp_path, "", listener_tls=tls)))
    assert str(refused.value).startswith("listener[0].key_file: ")
    assert "does not match" in str(refused.value)


def test_postmaster_without_a_domain_is_accepted_from_anyone(tmp_path) -> None:
    """RFC 5321 §4.5.1: `RCPT TO:<Postmaster>` must be accepted; the hostname (mx.test) is not
    hosted, so it goes to the postmaster of the hosted domain."""
    from tests.support.mailgate_server import InProcessMailgate
    from tests.support.receiving import config_text, rcpt_replies

    with InProcessMailgate(config_text(tmp_path)) as mg:
        replies = mg.call(rcpt_replies(mg.port("mx"), ["Postmaster", "postmaster"]))
        assert all(reply.startswith("250") for reply in replies), replies
