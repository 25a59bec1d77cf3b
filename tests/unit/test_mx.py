"""resolve_mx and StaticResolver against zone data: ordering, implicit and null MX, failures."""

from __future__ import annotations

import asyncio
import random

import pytest

from mailgate.core.address import AddressError
from mailgate.core.reply import NULL_MX
from mailgate.dns.mx import MxHost, NullMx, resolve_mx
from mailgate.dns.resolver import DnsNoSuchDomain, DnsTemporaryError, StaticResolver

pytestmark = pytest.mark.timeout(10)

HOSTS = {
    "mx1.example.net": {"A": ["192.0.2.1"]},
    "mx2.example.net": {"A": ["192.0.2.2"], "AAAA": ["2001:db8::2"]},
    "mx3.example.net": {"AAAA": ["2001:db8::3"]},
    "mx4.example.net": {"A": ["192.0.2.4"]},
    "noaddr.example.net": {"TXT": ["exists without addresses"]},
    "broken.example.net": "SERVFAIL",
    "slow.example.net": "TIMEOUT",
}


def zone(**domains: object) -> StaticResolver:
    records: dict[str, object] = dict(HOSTS)
    records.update({name.replace("_", "."): value for name, value in domains.items()})
    return StaticResolver(records)


def resolve(resolver: StaticResolver, domain: str, rng: random.Random | None = None) -> list[MxHost]:
    return asyncio.run(resolve_mx(resolver, domain, rng=rng or random.Random(1)))


def names(hosts: list[MxHost]) -> list[str]:
    return [host.name for host in hosts]


def test_sorted_by_preference_with_addresses_ipv6_first() -> None:
    resolver = zone(
        example_com={
            "MX": [(30, "mx3.example.net"), (10, "mx1.example.net"), (20, "MX2.example.net.")]
        }
    )
    hosts = resolve(resolver, "example.com")
    assert hosts == [
        MxHost(10, "mx1.example.net", ["192.0.2.1"], implicit=False),
        MxHost(20, "mx2.example.net", ["2001:db8::2", "192.0.2.2"], implicit=False),
        MxHost(30, "mx3.example.net", ["2001:db8::3"], implicit=False),
    ]


def test_equal_preferences_shuffled_by_the_rng_never_across_preferences() -> None:
    records = [(10, "mx1.example.net"), (10, "mx2.example.net"), (10, "mx3.example.net")]
    resolver = zone(example_com={"MX": records + [(20, "mx4.example.net")]})
    orders = {
        tuple(names(resolve(resolver, "example.com", random.Random(seed)))) for seed in range(40)
    }
    assert len({order[:3] for order in orders}) > 1  # equal preferences really vary
    for order in orders:
        assert sorted(order[:3]) == ["mx1.example.net", "mx2.example.net", "mx3.example.net"]
        assert order[3] == "mx4.example.net"


def test_same_seed_gives_same_order() -> None:
    records = [(10, "mx1.example.net"), (10, "mx2.example.net"), (10, "mx3.example.net")]
    resolver = zone(example_com={"MX": records})
    first = names(resolve(resolver, "example.com", random.Random(7)))
    assert names(resolve(resolver, "example.com", random.Random(7))) == first


def test_no_mx_gives_implicit_mx_from_the_domains_addresses() -> None:
    resolver = zone(example_com={"A": ["192.0.2.80"], "AAAA": ["2001:db8::80"]})
    assert resolve(resolver, "example.com") == [
        MxHost(0, "example.com", ["2001:db8::80", "192.0.2.80"], implicit=True)
    ]


def test_no_mx_and_no_address_is_temporary() -> None:
    with pytest.raises(DnsTemporaryError):
        resolve(zone(example_com={"TXT": ["nothing else"]}), "example.com")


def test_null_mx_is_permanent_with_the_rfc7505_reply() -> None:
    with pytest.raises(NullMx) as caught:
        resolve(zone(example_com={"MX": [(0, ".")], "A": ["192.0.2.80"]}), "example.com")
    assert caught.value.domain == "example.com"
    assert caught.value.reply == NULL_MX
    assert (caught.value.reply.code, caught.value.reply.enhanced) == (556, "5.1.10")


def test_root_target_alone_at_any_preference_is_a_null_mx() -> None:
    with pytest.raises(NullMx):
        resolve(zone(example_com={"MX": [(10, ".")]}), "example.com")


def test_root_target_beside_real_hosts_is_ignored() -> None:
    resolver = zone(example_com={"MX": [(0, "."), (10, "mx1.example.net")]})
    assert names(resolve(resolver, "example.com")) == ["mx1.example.net"]


def test_nxdomain_is_permanent() -> None:
    with pytest.raises(DnsNoSuchDomain):
        resolve(zone(gone_test="NXDOMAIN"), "gone.test")
    with pytest.raises(DnsNoSuchDomain):
        resolve(zone(), "never-listed.test")


@pytest.mark.parametrize("failure", ["SERVFAIL", "TIMEOUT"])
def test_mx_lookup_failure_is_temporary(failure: str) -> None:
    with pytest.raises(DnsTemporaryError):
        resolve(zone(example_com=failure), "example.com")
    with pytest.raises(DnsTemporaryError):
        resolve(zone(example_com={"MX": failure}), "example.com")


def test_hosts_without_address_or_nonexistent_are_skipped() -> None:
    records = [(5, "noaddr.example.net"), (6, "missing.example.net"), (10, "mx1.example.net")]
    assert names(resolve(zone(example_com={"MX": records}), "example.com")) == ["mx1.example.net"]


def test_temporarily_failing_host_kept_without_addresses_when_another_works() -> None:
    records = [(5, "broken.example.net"), (7, "slow.example.net"), (10, "mx1.example.net")]
    hosts = resolve(zone(example_com={"MX": records}), "example.com")
    assert [(host.name, host.addresses) for host in hosts] == [
        ("broken.example.net", []),
        ("slow.example.net", []),
        ("mx1.example.net", ["192.0.2.1"]),
    ]


@pytest.mark.parametrize(
    "records",
    [
        [(5, "broken.example.net"), (10, "noaddr.example.net")],
        [(5, "missing.example.net"), (10, "noaddr.example.net")],
    ],
)
def test_no_host_with_an_address_is_temporary(records: list[tuple[int, str]]) -> None:
    with pytest.raises(DnsTemporaryError):
        resolve(zone(example_com={"MX": records}), "example.com")


def test_a_host_listed_twice_keeps_its_lowest_preference() -> None:
    records = [(30, "mx1.example.net"), (20, "mx4.example.net"), (10, "MX1.example.net")]
    hosts = resolve(zone(example_com={"MX": records}), "example.com")
    assert [(host.preference, host.name) for host in hosts] == [
        (10, "mx1.example.net"),
        (20, "mx4.example.net"),
    ]


def test_domain_case_and_idn_are_normalised_before_lookup() -> None:
    resolver = zone(**{"xn--bcher-kva_test": {"MX": [(10, "mx1.example.net")]}})
    assert names(resolve(resolver, "BÜCHER.test")) == ["mx1.example.net"]
    assert resolver.queries[0] == ("xn--bcher-kva.test", "MX")


def test_malformed_domain_is_a_caller_error() -> None:
    with pytest.raises(AddressError):
        resolve(zone(), "bad..domain")


# --- StaticResolver conventions (shared with the loopback server through static_answer) ---------


def test_one_family_failing_still_gives_the_other_family() -> None:
    resolver = StaticResolver({"half.test": {"A": ["192.0.2.9"], "AAAA": "SERVFAIL"}})
    assert asyncio.run(resolver.addresses("half.test")) == ["192.0.2.9"]


def test_one_family_failing_and_the_other_empty_is_temporary() -> None:
    resolver = StaticResolver({"half.test": {"AAAA": "TIMEOUT"}})
    with pytest.raises(DnsTemporaryError):
        asyncio.run(resolver.addresses("half.test"))


def test_ancestor_of_a_listed_name_exists_without_records() -> None:
    resolver = StaticResolver({"mx.deep.example.org": {"A": ["192.0.2.5"]}})
    assert asyncio.run(resolver.mx("deep.example.org")) == []
    with pytest.raises(DnsNoSuchDomain):
        asyncio.run(resolver.mx("other.example.org"))


def test_unknown_failure_word_in_zone_data_is_rejected() -> None:
    with pytest.raises(ValueError):
        asyncio.run(StaticResolver({"x.test": "REFUSED"}).a("x.test"))
