"""tools/mx_probe.lookup and the `mailgate mx` table: MX, implicit MX, null MX and failures."""

from __future__ import annotations

import asyncio

import pytest

from mailgate.cli.mx_cmd import render_lookup
from mailgate.dns.resolver import StaticResolver
from mailgate.tools import mx_probe
from mailgate.tools.mx_probe import lookup, probe_targets, validate_domain

pytestmark = pytest.mark.timeout(10)

ZONE = StaticResolver({
    "example.com": {"MX": [(20, "mx2.example.com"), (10, "mx1.example.com"), (10, "mx0.example.com"),
                           (30, "ghost.example.com")]},
    "mx0.example.com": {"A": ["192.0.2.10"]},
    "mx1.example.com": {"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]},
    "mx2.example.com": {"A": ["192.0.2.2"]},
    "implicit.test": {"A": ["192.0.2.50"]},
    "null.test": {"MX": [(0, ".")]},
    "broken.test": "SERVFAIL",
    "xn--bcher-kva.test": {"MX": [(5, "mx.xn--bcher-kva.test")]},
    "mx.xn--bcher-kva.test": {"A": ["192.0.2.77"]},
})


def run(domain: str) -> mx_probe.MxLookup:
    return asyncio.run(lookup(ZONE, domain))


def test_hosts_in_preference_order_with_addresses_and_equal_preferences_by_name() -> None:
    report = run("Example.COM")
    assert report.outcome == mx_probe.MX
    assert report.records == [(10, "mx0.example.com"), (10, "mx1.example.com"), (20, "mx2.example.com"),
                              (30, "ghost.example.com")]
    assert [(h.preference, h.name, h.addresses) for h in report.hosts] == [
        (10, "mx0.example.com", ["192.0.2.10"]),
        (10, "mx1.example.com", ["2001:db8::1", "192.0.2.1"]),
        (20, "mx2.example.com", ["192.0.2.2"]),
    ]
    assert probe_targets(report)[:3] == [
        ("mx0.example.com", "192.0.2.10"), ("mx1.example.com", "2001:db8::1"), ("mx1.example.com", "192.0.2.1"),
    ]
    table = render_lookup(report)
    assert "ghost.example.com" in table and "skipped" in table
    assert "RFC 5321 §5.1" in table


def test_implicit_mx_is_explained() -> None:
    report = run("implicit.test")
    assert report.outcome == mx_probe.IMPLICIT
    assert [(h.preference, h.name, h.addresses) for h in report.hosts] == [(0, "implicit.test", ["192.0.2.50"])]
    assert "(implicit MX)" in render_lookup(report)
    assert "implicit MX, RFC 5321 §5.1" in report.explanation


def test_null_mx_is_explained() -> None:
    report = run("null.test")
    assert report.outcome == mx_probe.NULL and report.hosts == []
    assert "RFC 7505" in render_lookup(report) and "556 5.1.10" in report.explanation


def test_failures_are_named() -> None:
    assert run("missing.test").outcome == mx_probe.NO_SUCH_DOMAIN
    assert run("broken.test").outcome == mx_probe.TEMPORARY


def test_idn_domain_is_looked_up_as_a_label() -> None:
    report = run("bücher.test")
    assert report.domain == "xn--bcher-kva.test"
    assert report.hosts[0].addresses == ["192.0.2.77"]


def test_malformed_domain_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="not a valid domain"):
        validate_domain("bad..domain")
