"""DKIM signing end to end, judged by two independent verifiers: OpenDKIM's `opendkim-testmsg`
and rspamd's dkim module.

mailgate runs in-process; messages go in over SMTP from a trusted client (signed) and from an
untrusted one (never signed); the stored message is handed to opendkim-testmsg with the keys'
records served by a real DNS server (tests/support/opendkim.py). Each signature of the dual
signature is checked on its own, then the attacks: body tampering, a second From: above the
signed one (oversigning), and a message the screener stripped and mailgate then signed.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailgate.app import Application
from mailgate.app_config import StartupError
from mailgate.auth.dkim_keys import generate_private_key, key_from_bytes, write_private_key
from mailgate.auth.dkim_verify import verify_all
from mailgate.auth.dns_cache import ThreadLookups
from mailgate.config.loader import load_text
from mailgate.dns.resolver import StaticResolver
from tests.conftest import free_port, require_binary
from tests.support import opendkim
from tests.support.dns_server import LoopbackDnsServer
from tests.support.mailgate_server import InProcessMailgate
from tests.support.rspamd import start_rspamd
from tests.support.receiving import EXTERNAL, HOSTED, UNTRUSTED_SOURCE, config_text, only_message, queued

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SIGNED = "signer.test"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("dkim")
    made = {}
    for kind, selector in (("rsa", "r2026"), ("ed25519", "e2026")):
        pem = generate_private_key(kind)
        write_private_key(folder / f"{selector}.key", pem)
        made[kind] = key_from_bytes(pem, SIGNED, selector, str(folder / f"{selector}.key"))
    return made


def _zone(keys: dict) -> dict:
    return {key.record_name: {"TXT": [key.txt_record()]} for key in keys.values()}


def _dkim_config(keys: dict) -> str:
    return "".join(
        f'\n[[dkim_key]]\ndomain = "{SIGNED}"\nselector = "{key.selector}"\nkey_file = "{key.path}"\n'
        for key in keys.values()
    )


STRIP_RULE = """
[[screen_rule]]
name = "no-executables"
direction = "both"
action = "strip"
extension = ["exe"]
"""


@pytest.fixture
def mailgate(tmp_path: Path, keys: dict) -> Iterator[InProcessMailgate]:
    reason = opendkim.available()
    if reason:
        pytest.skip(reason) if not _in_ci() else pytest.fail(reason)
    text = config_text(tmp_path, server_extra="self_audit = false") + _dkim_config(keys) + STRIP_RULE
    with InProcessMailgate(text) as mg:
        yield mg


def _in_ci() -> bool:
    return bool(os.environ.get("CI"))


def _message(sender: str = f"Boss <boss@{SIGNED}>", attachment: bool = False) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = f"partner@{EXTERNAL}"
    message["Subject"] = "Quarterly figures"
    message["Date"] = "Sat, 05 Dec 2026 10:00:00 +0000"
    message["Message-ID"] = f"<q4@{SIGNED}>"
    message.set_content("The figures are attached.\n" * 20)
    if attachment:
        message.add_attachment(b"MZ\x90\x00 not really a program", maintype="application",
                               subtype="octet-stream", filename="tool.exe")
    return message


def _send(mg: InProcessMailgate, message: EmailMessage, to: str, source: str | None = None) -> None:
    with smtplib.SMTP("127.0.0.1", mg.port("mx"), timeout=30,
                      source_address=(source, 0) if source else None) as client:
        client.send_message(message, from_addr=f"boss@{SIGNED}", to_addrs=[to])


def _only_signature(stored: bytes, keep: str) -> bytes:
    """The message with only the DKIM-Signature whose a= is `keep` (each checked on its own)."""
    head, _, body = stored.partition(b"\r\n\r\n")
    lines, fields = head.split(b"\r\n"), []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    kept = [f for f in fields if not f.lower().startswith(b"dkim-signature:") or f"a={keep};".encode() in f]
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


def test_both_signatures_verify_with_opendkim(mailgate, keys, tmp_path: Path) -> None:
    _send(mailgate, _message(), f"partner@{EXTERNAL}")
    _, stored = only_message(mailgate)
    assert stored.count(b"DKIM-Signature:") == 2
    for algorithm in ("rsa-sha256", "ed25519-sha256"):
        single = _only_signature(stored, algorithm)
        assert single.count(b"DKIM-Signature:") == 1
        result = opendkim.verify(single, _zone(keys), tmp_path)
        assert result.passed, (algorithm, result.output)
    # c=relaxed/relaxed and the oversigned From, Subject, To, Date, Message-ID (RFC 6376 §8.15)
    assert b"c=relaxed/relaxed" in stored
    signed_list = stored.split(b"h=", 1)[1].split(b";", 1)[0].replace(b"\r\n ", b"").replace(b" ", b"")
    names = signed_list.split(b":")
    for name in (b"from", b"subject", b"to", b"date", b"message-id"):
        assert names.count(name) == 2, (name, names)


def test_tampered_body_and_added_from_fail_in_opendkim(mailgate, keys, tmp_path: Path) -> None:
    _send(mailgate, _message(), f"partner@{EXTERNAL}")
    _, stored = only_message(mailgate)
    tampered = stored.replace(b"The figures are attached.", b"Pay invoice 4711 today!!", 1)
    assert not opendkim.verify(tampered, _zone(keys), tmp_path).passed
    # A forged From: put above the signed one fails. (Our From is oversigned, h=from:from, so a
    # verifier that follows RFC 6376 §5.4.2 to the letter fails it too; OpenDKIM and rspamd also
    # refuse a second From: on their own, so this line alone does not prove the oversigning: the
    # h= count in the test above does.)
    forged = b"From: CEO <ceo@" + SIGNED.encode() + b">\r\n" + stored
    assert not opendkim.verify(forged, _zone(keys), tmp_path).passed
    assert opendkim.verify(stored, _zone(keys), tmp_path).passed


def test_message_stripped_by_the_screener_is_signed_after_and_verifies(mailgate, keys, tmp_path: Path) -> None:
    _send(mailgate, _message(attachment=True), f"partner@{EXTERNAL}")
    _, stored = only_message(mailgate)
    assert b"tool.exe" not in stored.split(b"\r\n\r\n", 1)[1] or b"removed" in stored.lower()
    assert b"TVqQ" not in stored  # the base64 of the executable is gone
    assert stored.count(b"DKIM-Signature:") == 2
    result = opendkim.verify(stored, _zone(keys), tmp_path)
    assert result.passed, result.output


def test_mail_from_outside_is_never_signed(mailgate) -> None:
    _send(mailgate, _message(), f"someone@{HOSTED}", source=UNTRUSTED_SOURCE)
    _, stored = only_message(mailgate)
    assert b"DKIM-Signature:" not in stored


def test_mail_from_a_domain_without_key_is_relayed_unsigned(mailgate) -> None:
    _send(mailgate, _message(sender="Someone <someone@unsigned.test>"), f"partner@{EXTERNAL}")
    assert len(queued(mailgate)) == 1
    _, stored = only_message(mailgate)
    assert b"DKIM-Signature:" not in stored


def _rspamd_dkim(rspamd_port: int, message: bytes) -> dict:
    """rspamd's DKIM symbols for `message` (checkv2, RFC-free JSON)."""
    connection = http.client.HTTPConnection("127.0.0.1", rspamd_port, timeout=30)
    try:
        connection.request("POST", "/checkv2", body=message, headers={"IP": "192.0.2.1"})
        symbols = json.loads(connection.getresponse().read()).get("symbols", {})
    finally:
        connection.close()
    return {name: value.get("options") for name, value in symbols.items() if name.startswith("R_DKIM")}


def test_both_signatures_verify_with_rspamd(mailgate, keys) -> None:
    binary = require_binary("rspamd")
    _send(mailgate, _message(), f"partner@{EXTERNAL}")
    _, stored = only_message(mailgate)
    with LoopbackDnsServer(_zone(keys)) as dns, start_rspamd(binary, free_port(), dns_port=dns.port,
                                                            filters="dkim") as rspamd:
        for algorithm, key in (("rsa-sha256", keys["rsa"]), ("ed25519-sha256", keys["ed25519"])):
            single = _only_signature(stored, algorithm)
            assert _rspamd_dkim(rspamd.port, single) == {"R_DKIM_ALLOW": [f"{SIGNED}:s={key.selector}"]}
            tampered = single.replace(b"The figures are attached.", b"Pay invoice 4711 today!!", 1)
            assert _rspamd_dkim(rspamd.port, tampered) == {"R_DKIM_REJECT": [f"{SIGNED}:s={key.selector}"]}


def test_a_key_file_others_can_read_stops_the_start(tmp_path: Path, keys) -> None:
    loose = tmp_path / "loose.key"
    write_private_key(loose, generate_private_key("rsa"))
    loose.chmod(0o644)
    text = config_text(tmp_path, server_extra="self_audit = false") + (
        f'\n[[dkim_key]]\ndomain = "{SIGNED}"\nselector = "loose"\nkey_file = "{loose}"\n')
    with pytest.raises(StartupError, match=r"dkim_key\[0\]\.key_file: .*mode 0644"):
        Application(load_text(text))


def test_mailgate_verifies_opendkims_signature(tmp_path: Path, keys) -> None:
    """OpenDKIM signs (rsa-sha1, its fixed default): mailgate's verifier finds the signature valid
    and refuses it only for its hash (RFC 8301 §3.1); the same message changed is a plain fail."""
    reason = opendkim.available()
    if reason:
        pytest.skip(reason) if not _in_ci() else pytest.fail(reason)
    raw = bytes(_message()).replace(b"\n", b"\r\n")
    signed = opendkim.sign(raw, SIGNED, keys["rsa"].selector, Path(keys["rsa"].path))
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha1;")

    async def verified(message: bytes) -> list:
        loop = asyncio.get_running_loop()
        lookups = ThreadLookups(StaticResolver(_zone(keys)), loop, 5)
        return await loop.run_in_executor(None, verify_all, message, lookups)

    [result] = asyncio.run(verified(signed))
    assert (result.result, result.domain, result.reason) == (
        "permerror", SIGNED, "rsa-sha1 is not accepted (RFC 8301 §3.1)")
    [tampered] = asyncio.run(verified(signed.replace(b"The figures", b"Our figures", 1)))
    assert tampered.result == "fail"
