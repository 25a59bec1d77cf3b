"""The start-up open-relay check (SPEC R3): dangerous shapes are named with their config key."""

from __future__ import annotations

import ipaddress

import pytest

from mailgate.policy.audit import open_relay_problems
from mailgate.policy.relay import HostedDomain, PolicySettings

pytestmark = pytest.mark.timeout(30)


def settings(
    networks: tuple[str, ...] = (), domains: tuple[str, ...] = ("example.com",), **extra: object
) -> PolicySettings:
    return PolicySettings(
        hosted_domains={name: HostedDomain(name) for name in domains},
        trusted_networks=tuple(ipaddress.ip_network(n) for n in networks),
        **extra,  # type: ignore[arg-type]
    )


def test_sane_configuration_has_no_problems() -> None:
    networks = (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.1.0/24", "127.0.0.1/32", "198.51.100.0/24",
        "fd00::/8", "fc00::/7", "fe80::/10", "::1/128", "2001:db8:10::/48",
    )
    sane = settings(networks, ("example.com", "bücher.example", ".sub.example.com"))
    assert open_relay_problems(sane, acknowledged=False) == []


def test_everything_trusted_is_an_open_relay_named_by_key() -> None:
    problems = open_relay_problems(settings(("0.0.0.0/0",)), acknowledged=False)
    assert problems == [
        "relay.trusted_networks: 0.0.0.0/0 makes an open relay; "
        "set relay.acknowledge_open_relay = true to run anyway"
    ]


HUGE = ["0.0.0.0/0", "::/0", "0.0.0.0/1", "128.0.0.0/7", "10.0.0.0/7", "2000::/3", "::/1",
        "::ffff:0:0/96", "::ffff:0:0/97"]
LARGE_PUBLIC = ["8.0.0.0/8", "100.64.0.0/10", "172.0.0.0/11", "192.168.0.0/15", "203.0.0.0/15",
                "2a00::/20", "2001:db8::/31"]


@pytest.mark.parametrize("network", HUGE)
def test_huge_trusted_networks_are_refused(network: str) -> None:
    problems = open_relay_problems(settings((network,)), acknowledged=False)
    assert len(problems) == 1
    assert problems[0].startswith(f"relay.trusted_networks: {network}")
    assert "open relay" in problems[0] and "relay.acknowledge_open_relay = true" in problems[0]


@pytest.mark.parametrize("network", LARGE_PUBLIC)
def test_large_public_trusted_networks_are_refused(network: str) -> None:
    problems = open_relay_problems(settings((network,)), acknowledged=False)
    assert len(problems) == 1 and "large public range" in problems[0]


def test_mapped_network_is_shown_with_its_ipv4_meaning() -> None:
    (problem,) = open_relay_problems(settings(("::ffff:0:0/96",)), acknowledged=False)
    assert "::ffff:0:0/96 (= 0.0.0.0/0)" in problem


@pytest.mark.parametrize("name", ["*", ".", "*.example.com", ".com", ".museum"])
def test_wildcard_hosted_domains_are_refused(name: str) -> None:
    problems = open_relay_problems(settings(domains=("example.com", name)), acknowledged=False)
    assert len(problems) == 1
    assert problems[0].startswith(f"domain[1].name: {name!r}")
    assert "relay.acknowledge_open_relay = true" in problems[0]


def test_routing_local_parts_is_reported() -> None:
    problems = open_relay_problems(settings(allow_routing_local_parts=True), acknowledged=False)
    assert len(problems) == 1 and problems[0].startswith("relay.allow_routing_local_parts:")


def test_every_problem_is_listed() -> None:
    networks = ("0.0.0.0/0", "10.0.0.0/8", "::/0")
    risky = settings(networks, ("*", "example.com"), allow_routing_local_parts=True)
    problems = open_relay_problems(risky, acknowledged=False)
    assert len(problems) == 4
    assert [p.split(":")[0] for p in problems] == [
        "relay.trusted_networks",
        "relay.trusted_networks",
        "domain[0].name",
        "relay.allow_routing_local_parts",
    ]


def test_acknowledged_configuration_runs() -> None:
    risky = settings(("0.0.0.0/0",), ("*",), allow_routing_local_parts=True)
    assert open_relay_problems(risky, acknowledged=True) == []
