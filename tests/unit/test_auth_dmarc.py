"""DMARC and Authentication-Results without sockets: record parsing (RFC 7489 §6.3), policy
discovery with the organizational-domain fallback (§6.6.3), relaxed and strict alignment through
the Public Suffix List (§3.1), pct= (§6.6.4), temperror, and the removal of forged results."""

from __future__ import annotations

import asyncio

import pytest

from mailgate.auth.dkim_verify import DkimResult
from mailgate.auth.dmarc import OrganizationalDomains, aligned, evaluate, find_record, parse_record
from mailgate.auth.results import authserv_id_of, remove_ours
from mailgate.auth.spf import SpfResult
from mailgate.dns.resolver import DnsTemporaryError, StaticResolver

ORGS = OrganizationalDomains()


def test_organizational_domain_uses_the_public_suffix_list() -> None:
    assert ORGS.of("mail.example.com") == "example.com"
    assert ORGS.of("a.b.example.co.uk") == "example.co.uk"
    assert ORGS.of("co.uk") == "co.uk"  # a public suffix is its own


@pytest.mark.parametrize("text, expected", [
    ("v=DMARC1; p=reject", ("reject", "reject", "r", "r", 100)),
    ("v=DMARC1;p=quarantine;sp=none;adkim=s;aspf=s;pct=20", ("quarantine", "none", "s", "s", 20)),
    ("v=DMARC1; p=bogus; rua=mailto:x@example.com", ("none", "none", "r", "r", 100)),
])
def test_record_tags(text: str, expected: tuple) -> None:
    record = parse_record(text, "example.com")
    assert record is not None and (record.p, record.sp, record.adkim, record.aspf, record.pct) == expected


@pytest.mark.parametrize("text", ["p=reject; v=DMARC1", "v=DMARC2; p=reject", "v=spf1 -all", "v=DMARC1; p=bogus"])
def test_not_a_record(text: str) -> None:
    assert parse_record(text, "example.com") is None


def test_discovery_falls_back_to_the_organizational_domain_and_temperror_propagates() -> None:
    resolver = StaticResolver({
        "_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject; sp=quarantine", "unrelated text"]},
        "_dmarc.twice.test": {"TXT": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]},
        "_dmarc.slow.test": "TIMEOUT",
    })
    record = asyncio.run(find_record(resolver, "news.example.com", "example.com"))
    assert record is not None and record.domain == "example.com" and record.sp == "quarantine"
    assert asyncio.run(find_record(resolver, "twice.test", "twice.test")) is None  # §6.6.3: two records
    with pytest.raises(DnsTemporaryError):
        asyncio.run(find_record(resolver, "slow.test", "slow.test"))


def test_alignment() -> None:
    assert aligned("mail.example.com", "example.com", "r", ORGS)
    assert not aligned("mail.example.com", "example.com", "s", ORGS)
    assert not aligned("example.co.uk", "other.co.uk", "r", ORGS)  # the same public suffix is not enough
    assert not aligned("", "example.com", "r", ORGS)


SPF_FAIL = SpfResult("fail", "mailfrom", "x@evil.test", "evil.test")


def test_evaluate_pass_fail_temperror_and_sp() -> None:
    record = parse_record("v=DMARC1; p=reject; sp=quarantine", "example.com")
    good = DkimResult("pass", "example.com", "s1")
    assert evaluate("example.com", record, SPF_FAIL, [good], ORGS).result == "pass"
    third_party = DkimResult("pass", "mailer.test", "s1")
    failed = evaluate("example.com", record, SPF_FAIL, [third_party], ORGS)
    assert (failed.result, failed.policy, failed.disposition) == ("fail", "reject", "reject")
    sub = evaluate("news.example.com", record, SPF_FAIL, [], ORGS)
    assert (sub.result, sub.disposition) == ("fail", "quarantine")  # sp= for a subdomain
    slow = evaluate("example.com", record, SPF_FAIL, [DkimResult("temperror", "example.com", "s1")], ORGS)
    assert slow.result == "temperror"  # never "pass", never a hasty "fail"
    spf_pass = SpfResult("pass", "mailfrom", "b@bounce.example.com", "bounce.example.com")
    assert evaluate("example.com", record, spf_pass, [], ORGS).result == "pass"  # relaxed SPF alignment
    strict = parse_record("v=DMARC1; p=reject; aspf=s", "example.com")
    assert evaluate("example.com", strict, spf_pass, [], ORGS).result == "fail"


def test_pct_sampling_downgrades_the_disposition() -> None:
    record = parse_record("v=DMARC1; p=reject; pct=10", "example.com")
    assert evaluate("example.com", record, SPF_FAIL, [], ORGS, chance=0.05).disposition == "reject"
    assert evaluate("example.com", record, SPF_FAIL, [], ORGS, chance=0.5).disposition == "quarantine"


def test_without_a_record_alignment_is_still_known() -> None:
    result = evaluate("example.com", None, SPF_FAIL, [DkimResult("pass", "example.com")], ORGS)
    assert (result.result, result.aligned_pass) == ("none", True)


def test_forged_results_with_our_id_are_removed_others_kept() -> None:
    message = (b"Received: from x\r\nAuthentication-Results: MX.test (forged);\r\n dkim=pass\r\n"
               b"Authentication-Results: other.example; spf=pass\r\n"
               b"Authentication-Results: (c) mx.test 1; dmarc=pass\r\nSubject: s\r\n\r\n"
               b"Authentication-Results: mx.test; in the body stays\r\n")
    cleaned = remove_ours(message, "mx.test")
    assert cleaned == (b"Received: from x\r\nAuthentication-Results: other.example; spf=pass\r\nSubject: s\r\n\r\n"
                       b"Authentication-Results: mx.test; in the body stays\r\n")
    assert authserv_id_of(b' "mx.test" ; none') == "mx.test"
