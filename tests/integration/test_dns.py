"""DnsPythonResolver, resolve_mx and dnsbl_listed against a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Iterator

import pytest

from mailgate.dns.dnsbl import dnsbl_listed, query_name
from mailgate.dns.mx import MxHost, NullMx, resolve_mx
from mailgate.dns.resolver import DnsNoSuchDomain, DnsPythonResolver, DnsTemporaryError
from tests.support.dns_server import LoopbackDnsServer

pytestmark = pytest.mark.timeout(30)

# 40 MX records with distinct long first labels (no name compression) exceed the resolver's
# 1232-byte EDNS UDP payload, so the server truncates and the resolver retries over TCP.
BIG_MX = [(20 + index, f"mx{index:02d}-{'padding' * 6}.example.net") for index in range(40)]

REASON = "listed: see https://bl.test/192.0.2.99"
ZONE: dict[str, object] = {
    "example.com": {
        "MX": [(20, "mx2.example.net"), (10, "mx1.example.net")],
        "TXT": ["v=spf1 -all"],
    },
    "mx1.example.net": {"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]},
    "mx2.example.net": {"A": ["192.0.2.2"]},
    "mx3.example.net": {"AAAA": ["2001:db8::3"]},
    "mx9.example.net": {"A": ["192.0.2.9"]},
    "shuffle.test": {
        "MX": [(5, "mx1.example.net"), (5, "mx2.example.net"), (5, "mx3.example.net"), (9, "mx9.example.net")]
    },
    "implicit.test": {"A": ["192.0.2.80"], "AAAA": ["2001:db8::80"]},
    "nullmx.test": {"MX": [(0, ".")]},
    "gone.test": "NXDOMAIN",
    "bad.test": "SERVFAIL",
    "slow.test": "TIMEOUT",
    "broken.example.net": "SERVFAIL",
    "partial.test": {"MX": [(5, "broken.example.net"), (10, "mx2.example.net")]},
    "big.test": {"MX": [(10, "mx1.example.net")] + BIG_MX},
    # DNSBL zone: 192.0.2.99 and 2001:db8::99 listed, 192.0.2.98 gets a "bad resolver" code.
    "99.2.0.192.bl.test": {"A": ["127.0.0.2"], "TXT": [REASON]},
    query_name("2001:db8::99", "bl.test"): {"A": ["127.0.0.4"]},
    "98.2.0.192.bl.test": {"A": ["127.255.255.254"]},
    "99.2.0.192.second.test": {"A": ["127.0.0.3"], "TXT": ["second list"]},
    "broken-bl.test": "SERVFAIL",
    "slow-bl.test": "TIMEOUT",
}


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackDnsServer]:
    with LoopbackDnsServer(ZONE) as running:
        yield running


def resolver_for(server: LoopbackDnsServer, timeout: float = 2.0) -> DnsPythonResolver:
    return DnsPythonResolver(nameservers=[server.host], port=server.port, timeout=timeout)


def mx(server: LoopbackDnsServer, domain: str, seed: int = 1) -> list[MxHost]:
    return asyncio.run(resolve_mx(resolver_for(server), domain, rng=random.Random(seed)))


def test_mx_sorted_with_ipv6_and_ipv4_addresses(server: LoopbackDnsServer) -> None:
    assert mx(server, "example.com") == [
        MxHost(10, "mx1.example.net", ["2001:db8::1", "192.0.2.1"], implicit=False),
        MxHost(20, "mx2.example.net", ["192.0.2.2"], implicit=False),
    ]


def test_implicit_mx(server: LoopbackDnsServer) -> None:
    assert mx(server, "implicit.test") == [
        MxHost(0, "implicit.test", ["2001:db8::80", "192.0.2.80"], implicit=True)
    ]


def test_null_mx(server: LoopbackDnsServer) -> None:
    with pytest.raises(NullMx):
        mx(server, "nullmx.test")


@pytest.mark.parametrize("domain", ["gone.test", "unlisted.example.com"])
def test_nxdomain_is_permanent(server: LoopbackDnsServer, domain: str) -> None:
    with pytest.raises(DnsNoSuchDomain):
        mx(server, domain)


def test_servfail_is_temporary(server: LoopbackDnsServer) -> None:
    with pytest.raises(DnsTemporaryError):
        mx(server, "bad.test")


def test_timeout_is_temporary(server: LoopbackDnsServer) -> None:
    with pytest.raises(DnsTemporaryError):
        asyncio.run(resolve_mx(resolver_for(server, timeout=0.3), "slow.test"))
    assert ("slow.test", "MX", "udp") in server.queries


def test_temporarily_failing_host_kept_beside_a_working_one(server: LoopbackDnsServer) -> None:
    assert [(host.name, host.addresses) for host in mx(server, "partial.test")] == [
        ("broken.example.net", []),
        ("mx2.example.net", ["192.0.2.2"]),
    ]


def test_truncated_udp_answer_is_retried_over_tcp(server: LoopbackDnsServer) -> None:
    records = asyncio.run(resolver_for(server).mx("big.test"))
    assert sorted(records) == sorted([(10, "mx1.example.net")] + BIG_MX)
    asked = [transport for name, kind, transport in server.queries if (name, kind) == ("big.test", "MX")]
    assert asked[:2] == ["udp", "tcp"]


def test_mx_hosts_without_any_record_are_skipped(server: LoopbackDnsServer) -> None:
    assert [host.name for host in mx(server, "big.test")] == ["mx1.example.net"]


def test_equal_preferences_shuffled_by_the_rng(server: LoopbackDnsServer) -> None:
    orders = {tuple(host.name for host in mx(server, "shuffle.test", seed)) for seed in range(12)}
    assert len(orders) > 1
    for order in orders:
        assert sorted(order[:3]) == ["mx1.example.net", "mx2.example.net", "mx3.example.net"]
        assert order[3] == "mx9.example.net"


def test_nodata_and_txt(server: LoopbackDnsServer) -> None:
    resolver = resolver_for(server)
    assert asyncio.run(resolver.mx("mx2.example.net")) == []
    assert asyncio.run(resolver.addresses("example.com")) == []
    assert asyncio.run(resolver.txt("example.com")) == ["v=spf1 -all"]
    assert asyncio.run(resolver.a("mx2.example.net")) == ["192.0.2.2"]


def test_server_on_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with LoopbackDnsServer(ZONE, host="::1") as server:
        assert mx(server, "example.com")[0].name == "mx1.example.net"


# --- DNSBL -----------------------------------------------------------------------------------------


def listed(
    server: LoopbackDnsServer, client_ip: str, zones: list[str], timeout: float = 2.0
) -> tuple[str, str] | None:
    return asyncio.run(dnsbl_listed(resolver_for(server, timeout), client_ip, zones))


def test_query_names() -> None:
    assert query_name("192.0.2.99", "bl.test.") == "99.2.0.192.bl.test"
    assert query_name("::ffff:192.0.2.99", "BL.test") == "99.2.0.192.bl.test"
    nibbles = "9.9.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2"
    assert query_name("2001:db8::99", "bl.test") == nibbles + ".bl.test"
    with pytest.raises(ValueError):
        query_name("not-an-ip", "bl.test")


def test_ipv4_listed_with_reason(server: LoopbackDnsServer) -> None:
    assert listed(server, "192.0.2.99", ["bl.test"]) == ("bl.test", REASON)


def test_ipv6_listed_without_reason(server: LoopbackDnsServer) -> None:
    assert listed(server, "2001:db8::99", ["bl.test"]) == ("bl.test", "")


@pytest.mark.parametrize("client_ip", ["192.0.2.1", "2001:db8::1", "192.0.2.98"])
def test_not_listed(server: LoopbackDnsServer, client_ip: str) -> None:
    assert listed(server, client_ip, ["bl.test"]) is None


def test_first_listing_zone_in_the_callers_order(server: LoopbackDnsServer) -> None:
    assert listed(server, "192.0.2.99", ["second.test", "bl.test"]) == ("second.test", "second list")
    assert listed(server, "192.0.2.99", ["other.test", "bl.test"]) == ("bl.test", REASON)


def test_dns_failures_fail_open(server: LoopbackDnsServer) -> None:
    assert listed(server, "192.0.2.99", ["broken-bl.test", "slow-bl.test"], timeout=0.3) is None
    assert listed(server, "192.0.2.99", ["slow-bl.test", "bl.test"], timeout=0.3) == ("bl.test", REASON)
