"""Inbound SPF, DKIM and DMARC through SMTP end to end, with a real DNS server on loopback.

mailgate runs in-process with its resolver pointed at a `LoopbackDnsServer` whose zone holds the
SPF, DKIM and DMARC records of a few sender domains. An untrusted client (127.0.0.2) sends to a
hosted domain; the reply and the stored Authentication-Results header are checked field by field.
Attacks: a forged From: of the hosted domain (CEO fraud), a forged From: of a p=reject domain, two
From: fields, an Authentication-Results header carrying our own authserv-id, SPF records past the
look-up and void-look-up limits, a DNS time-out (temperror, never pass), a body changed after
signing, a signature with l= and text appended below it.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.auth.arc import seal, verify_chain
from mailgate.auth.dkim_keys import generate_private_key, key_from_bytes, write_private_key
from mailgate.auth.dns_cache import ThreadLookups
from mailgate.dns.resolver import StaticResolver
from mailgate.auth.dkim_sign import DkimSigner, SigningKey
from mailgate.auth.inbound import DMARC_REJECTED, DMARC_TEMPORARY, HOSTED_FORGED, MULTIPLE_FROM, SPF_REJECTED
from tests.support.dns_server import LoopbackDnsServer
from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import HOSTED, HOSTNAME, UNTRUSTED_SOURCE, config_text, queued, stored_message

pytestmark = pytest.mark.timeout(120)

CLIENT = UNTRUSTED_SOURCE  # 127.0.0.2
HELO = "mta.sender.test"
KEY = key_from_bytes(generate_private_key("rsa"), "sender.test", "s1")
ED_KEY = key_from_bytes(generate_private_key("ed25519"), "sender.test", "e1")
SUB = "news.sender.test"
LIST_KEY = key_from_bytes(generate_private_key("rsa"), "lists.test", "arc1")
OUR_SEAL = key_from_bytes(generate_private_key("rsa"), "mx.test", "arc2026")

ZONE = {
    # sender.test: the client may send (SPF), signs with both keys, publishes p=reject
    "sender.test": {"TXT": [f"v=spf1 ip4:{CLIENT} -all"]},
    "_dmarc.sender.test": {"TXT": ["v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@sender.test"]},
    KEY.record_name: {"TXT": [KEY.txt_record()]},
    ED_KEY.record_name: {"TXT": [ED_KEY.txt_record()]},
    HELO: {"A": [CLIENT], "TXT": ["v=spf1 a -all"]},
    # other senders
    "quarantine.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.quarantine.test": {"TXT": ["v=DMARC1; p=quarantine"]},
    "nopolicy.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "soft.test": {"TXT": ["v=spf1 ~all"]},
    "neutral.test": {"TXT": ["v=spf1 ?all"]},
    "many.test": {"TXT": ["v=spf1 " + " ".join(f"include:i{i}.many.test" for i in range(11)) + " -all"]},
    **{f"i{i}.many.test": {"TXT": ["v=spf1 ip4:192.0.2.1"]} for i in range(11)},
    "voids.test": {"TXT": ["v=spf1 a:x1.voids.test a:x2.voids.test a:x3.voids.test ?all"]},
    "slow.test": "TIMEOUT",
    "_dmarc.slow.test": "TIMEOUT",
    "slowkey.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    "_dmarc.slowkey.test": {"TXT": ["v=DMARC1; p=reject"]},
    "s1._domainkey.slowkey.test": "TIMEOUT",
    LIST_KEY.record_name: {"TXT": [LIST_KEY.txt_record()]},
    OUR_SEAL.record_name: {"TXT": [OUR_SEAL.txt_record()]},
}


@pytest.fixture(scope="module")
def dns() -> Iterator[LoopbackDnsServer]:
    with LoopbackDnsServer(ZONE) as server:
        yield server


def _config(tmp_path: Path, dns: LoopbackDnsServer, authentication: str = "") -> str:
    return config_text(tmp_path, server_extra="self_audit = false") + f"""
[dns]
nameservers = ["127.0.0.1"]
port = {dns.port}
timeout = 1

[authentication]
dns_cache_ttl = 0
spf_time_limit = 5
{authentication}
"""


@pytest.fixture
def mailgate(tmp_path: Path, dns: LoopbackDnsServer) -> Iterator[InProcessMailgate]:
    with InProcessMailgate(_config(tmp_path, dns)) as mg:
        yield mg


def message(from_header: str, body: str = "Lunch on Friday?\r\n", extra: str = "") -> bytes:
    return (f"From: {from_header}\r\nTo: <boss@{HOSTED}>\r\nSubject: Lunch\r\n"
            f"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m1@x>\r\n{extra}\r\n{body}").encode()


def signed(raw: bytes, *keys, length: bool = False) -> bytes:
    signer = DkimSigner([SigningKey(k) for k in keys], ["from", "to", "subject", "date"], ["from"])
    if not length:
        return signer.sign(raw)[0] + raw
    import dkim
    return dkim.sign(raw, b"s1", b"sender.test", KEY.signing_key, length=True,
                     canonicalize=(b"relaxed", b"relaxed"), include_headers=[b"from", b"subject"]) + raw


def send(mg: InProcessMailgate, raw: bytes, mail_from: str, helo: str = HELO) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", mg.port("mx"), local_hostname=helo, timeout=60,
                      source_address=(CLIENT, 0)) as client:
        client.ehlo(helo)
        code, text = client.mail(mail_from)
        assert code == 250, text
        code, text = client.rcpt(f"boss@{HOSTED}")
        assert code == 250, text
        code, text = client.data(raw)
        return code, text.decode()


def results(mg: InProcessMailgate) -> dict[str, list[str]]:
    """Our Authentication-Results header as {method: [resinfo, ...]}, after checking its id."""
    summaries = queued(mg)
    assert len(summaries) == 1, summaries
    stored = stored_message(mg, summaries[0].queue_id)
    head = stored.split(b"\r\n\r\n", 1)[0].decode()
    fields = re.findall(r"^Authentication-Results:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head, re.M | re.I)
    ours = [f for f in fields if f.split(";", 1)[0].strip() == HOSTNAME]
    assert len(ours) == 1, fields
    parts = [p.strip() for p in re.sub(r"\r\n[ \t]+", " ", ours[0]).split(";")]
    found: dict[str, list[str]] = {}
    for part in parts[1:]:
        found.setdefault(part.split("=", 1)[0], []).append(part)
    return found


def test_aligned_spf_and_two_signatures_pass(mailgate) -> None:
    raw = signed(message("Alice <alice@sender.test>"), KEY, ED_KEY)
    assert send(mailgate, raw, "alice@sender.test")[0] == 250
    found = results(mailgate)
    assert found["spf"] == ["spf=pass smtp.mailfrom=alice@sender.test", f"spf=pass smtp.helo={HELO}"]
    dkim_ed, dkim_rsa = sorted(found["dkim"], key=lambda resinfo: "header.s=s1" in resinfo)
    assert dkim_rsa.startswith("dkim=pass header.d=sender.test header.s=s1 header.a=rsa-sha256 header.b=")
    assert dkim_ed.startswith("dkim=pass header.d=sender.test header.s=e1 header.a=ed25519-sha256 header.b=")
    assert found["dmarc"] == ["dmarc=pass (p=reject dis=NONE) header.from=sender.test"]


def test_rfc8463_ed25519_example_verifies(tmp_path: Path) -> None:
    raw = (Path(__file__).parents[1] / "data" / "dkim" / "rfc8463_ed25519.eml").read_bytes()
    zone = {"brisbane._domainkey.football.example.com": {
        "TXT": ["v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="]}}
    with LoopbackDnsServer(zone) as server, InProcessMailgate(_config(tmp_path, server)) as mg:
        assert send(mg, raw, "joe@football.example.com", helo="football.example.com")[0] == 250
        found = results(mg)
    assert found["dkim"] == [
        "dkim=pass header.d=football.example.com header.s=brisbane header.a=ed25519-sha256 header.b=/gCrinpc"]
    assert found["spf"][0] == "spf=none smtp.mailfrom=joe@football.example.com"
    assert found["dmarc"] == ["dmarc=none header.from=football.example.com"]


def test_forged_from_of_a_reject_domain_is_refused(mailgate) -> None:
    code, text = send(mailgate, message("CEO <ceo@sender.test>"), "bounce@elsewhere.test")
    assert (code, text) == (550, DMARC_REJECTED.enhanced + " " + DMARC_REJECTED.text.format(domain="sender.test"))
    assert queued(mailgate) == []


def test_subdomain_uses_sp_quarantine_and_is_held(mailgate) -> None:
    code, _ = send(mailgate, message(f"News <news@{SUB}>"), "bounce@elsewhere.test")
    assert code == 250
    summary = queued(mailgate)[0]
    assert summary.hold_reason.startswith(f"dmarc=fail (p=quarantine) header.from={SUB}")
    assert results(mailgate)["dmarc"] == [f"dmarc=fail (p=quarantine dis=QUARANTINE) header.from={SUB}"]


def test_forged_hosted_from_is_refused_without_any_policy(mailgate) -> None:
    """CEO fraud: From: our own domain, from outside, no SPF or DKIM for it anywhere."""
    code, text = send(mailgate, message(f"The CEO <ceo@{HOSTED}>"), f"ceo@{HOSTED}")
    assert code == 550 and text == HOSTED_FORGED.enhanced + " " + HOSTED_FORGED.text.format(domain=HOSTED)
    assert queued(mailgate) == []


def test_two_from_fields_are_refused(mailgate) -> None:
    raw = signed(message("Alice <alice@sender.test>"), KEY)
    forged = b"From: CEO <ceo@" + HOSTED.encode() + b">\r\n" + raw
    code, text = send(mailgate, forged, "alice@sender.test")
    assert code == 550 and text == f"{MULTIPLE_FROM.enhanced} {MULTIPLE_FROM.text}"


def test_spf_fail_is_tagged_by_default_and_softfail_recorded(mailgate) -> None:
    assert send(mailgate, message("x <x@nopolicy.test>"), "x@nopolicy.test")[0] == 250
    found = results(mailgate)
    assert found["spf"][0].startswith("spf=fail (") and found["spf"][0].endswith("smtp.mailfrom=x@nopolicy.test")
    assert found["dmarc"] == ["dmarc=none (no aligned pass) header.from=nopolicy.test"]
    summary = queued(mailgate)[0]
    stored = stored_message(mailgate, summary.queue_id)
    assert b"X-Mailgate-Tag: spf=fail smtp.mailfrom=x@nopolicy.test\r\n" in stored


@pytest.mark.parametrize("domain, expected", [("soft.test", "softfail"), ("neutral.test", "neutral"),
                                               ("unpublished.test", "none")])
def test_softfail_neutral_none(mailgate, domain: str, expected: str) -> None:
    assert send(mailgate, message(f"x <x@{domain}>"), f"x@{domain}")[0] == 250
    assert results(mailgate)["spf"][0].startswith(f"spf={expected} ")


def test_signatures_past_the_limit_are_not_checked(tmp_path: Path, dns) -> None:
    raw = signed(message("Alice <alice@sender.test>"), KEY, ED_KEY)
    with InProcessMailgate(_config(tmp_path, dns, "max_signatures = 1")) as mg:
        assert send(mg, raw, "alice@sender.test")[0] == 250
        found = results(mg)
    assert found["dkim"][0].startswith("dkim=pass header.d=sender.test")
    assert found["dkim"][1] == "dkim=neutral (not checked: more than 1 signatures)"


def test_spf_fail_rejected_when_configured(tmp_path: Path, dns) -> None:
    with InProcessMailgate(_config(tmp_path, dns, 'spf_fail_action = "reject"')) as mg:
        code, text = send(mg, message("x <x@nopolicy.test>"), "x@nopolicy.test")
    assert code == 550 and text.startswith(SPF_REJECTED.enhanced + " Message refused: SPF of nopolicy.test fails")


def test_p_quarantine_tag_and_reject_options(tmp_path: Path, dns) -> None:
    with InProcessMailgate(_config(tmp_path, dns, 'dmarc_quarantine_action = "tag"')) as mg:
        assert send(mg, message("x <x@quarantine.test>"), "x@quarantine.test")[0] == 250
        summary = queued(mg)[0]
        assert summary.hold_reason == ""
        assert b"X-Mailgate-Tag: dmarc=fail (p=quarantine) header.from=quarantine.test" in stored_message(mg, summary.queue_id)
    with InProcessMailgate(_config(tmp_path / "b", dns, 'dmarc_reject_action = "quarantine"')) as mg:
        assert send(mg, message("CEO <ceo@sender.test>"), "b@elsewhere.test")[0] == 250
        assert queued(mg)[0].hold_reason.startswith("dmarc=fail (p=reject)")


def test_spf_past_the_lookup_limits_is_permerror(mailgate) -> None:
    assert send(mailgate, message("x <x@many.test>"), "x@many.test")[0] == 250
    assert results(mailgate)["spf"][0] == "spf=permerror (SPF Permanent Error: Too many DNS lookups) smtp.mailfrom=x@many.test"


def test_spf_void_lookups_permerror(mailgate) -> None:
    assert send(mailgate, message("x <x@voids.test>"), "x@voids.test")[0] == 250
    assert results(mailgate)["spf"][0].startswith("spf=permerror (SPF Permanent Error: Void lookup limit of 2")


def test_dns_timeout_is_temperror_never_pass(mailgate) -> None:
    assert send(mailgate, message("x <x@slow.test>"), "x@slow.test")[0] == 250
    found = results(mailgate)
    assert found["spf"][0].startswith("spf=temperror") and found["dmarc"][0].startswith("dmarc=temperror")


def test_dkim_key_timeout_under_p_reject_tempfails(mailgate) -> None:
    other = key_from_bytes(KEY.signing_key, "slowkey.test", "s1")
    code, text = send(mailgate, signed(message("x <x@slowkey.test>"), other), "x@slowkey.test")
    assert code == 451 and text == DMARC_TEMPORARY.enhanced + " " + DMARC_TEMPORARY.text.format(domain="slowkey.test")


def test_tampered_body_fails_dkim_and_dmarc_rejects(mailgate) -> None:
    raw = signed(message("Alice <alice@sender.test>"), KEY).replace(b"Lunch on Friday?", b"Wire 50k today")
    code, _ = send(mailgate, raw, "bounce@elsewhere.test")
    assert code == 550


def test_l_tag_with_appended_text_is_policy_not_pass(mailgate) -> None:
    raw = signed(message("Alice <alice@sender.test>"), length=True) + b"Click http://evil.example/\r\n"
    code, _ = send(mailgate, raw, "bounce@elsewhere.test")
    assert code == 550  # the only signature covers only part of the body: no aligned pass


def test_our_authentication_results_from_outside_are_removed(mailgate) -> None:
    fake = f"Authentication-Results: {HOSTNAME}; dkim=pass header.d=bank.example; dmarc=pass\r\n"
    other = "Authentication-Results: other.example; spf=pass smtp.mailfrom=x@other.example\r\n"
    raw = signed(message("Alice <alice@sender.test>", extra=fake + other), KEY)
    assert send(mailgate, raw, "alice@sender.test")[0] == 250
    stored = stored_message(mailgate, queued(mailgate)[0].queue_id)
    assert b"bank.example" not in stored and other.encode() in stored
    assert results(mailgate)["dmarc"][0].startswith("dmarc=pass")


def _through_a_mailing_list(raw: bytes) -> bytes:
    """What lists.test sends on: the body changed (a footer), its results and its ARC set on top."""
    changed = raw + b"--\r\nlunch-list mailing list\r\n"
    noted = b"Authentication-Results: lists.test; dkim=pass header.d=sender.test; arc=none\r\n" + changed
    return seal(noted, LIST_KEY, "lists.test") + noted


def test_arc_from_a_trusted_sealer_lifts_the_dmarc_reject(tmp_path: Path, dns) -> None:
    raw = _through_a_mailing_list(signed(message("Alice <alice@sender.test>"), KEY))
    with InProcessMailgate(_config(tmp_path, dns)) as mg:  # lists.test is not trusted: DKIM broke, refused
        assert send(mg, raw, "bounce@lists.test")[0] == 550
    with InProcessMailgate(_config(tmp_path / "t", dns, 'arc_trusted_sealers = ["lists.test"]')) as mg:
        assert send(mg, raw, "bounce@lists.test")[0] == 250
        found = results(mg)
    assert found["dkim"][0].startswith("dkim=fail (body hash did not verify) header.d=sender.test")
    assert found["dmarc"] == ["dmarc=fail (p=reject dis=NONE, policy not applied: ARC sealed by trusted "
                              "lists.test) header.from=sender.test"]
    assert found["arc"] == [f"arc=pass (i=1 lists.test) smtp.remote-ip={CLIENT}"]


def test_broken_arc_chain_is_fail_and_lifts_nothing(tmp_path: Path, dns) -> None:
    raw = _through_a_mailing_list(signed(message("Alice <alice@sender.test>"), KEY)).replace(b"Lunch", b"Wire")
    with InProcessMailgate(_config(tmp_path, dns, 'arc_trusted_sealers = ["lists.test"]')) as mg:
        assert send(mg, raw, "bounce@lists.test")[0] == 550


def test_arc_seal_after_strip_verifies(tmp_path: Path, dns) -> None:
    key_file = tmp_path / "arc.key"
    write_private_key(key_file, OUR_SEAL.signing_key)
    extra = (f'arc_seal_key_file = "{key_file}"\narc_seal_domain = "mx.test"\narc_seal_selector = "arc2026"\n'
             '\n[[screen_rule]]\nname = "no-exe"\naction = "strip"\nextension = ["exe"]\n')
    body = ("--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\n"
            "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"x.exe\"\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--b--\r\n")
    raw = signed(message("Alice <alice@sender.test>", body=body,
                         extra='MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n'), KEY)
    with InProcessMailgate(_config(tmp_path, dns, extra)) as mg:
        assert send(mg, raw, "alice@sender.test")[0] == 250
        found = results(mg)
        stored = stored_message(mg, queued(mg)[0].queue_id)
    assert found["dkim"][0].startswith("dkim=pass") and found["arc"][0].startswith("arc=none")
    assert b"TVqQAAMAAAAEAAAA" not in stored  # stripped after the checks
    assert stored.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=mx.test; s=arc2026;")

    async def chain() -> object:
        loop = asyncio.get_running_loop()
        lookups = ThreadLookups(StaticResolver(ZONE), loop, 5)
        return await loop.run_in_executor(None, verify_chain, stored, lookups)

    verdict = asyncio.run(chain())
    assert (verdict.result, verdict.sealer) == ("pass", "mx.test"), verdict
    assert b"ARC-Authentication-Results: i=1; mx.test;" in stored
