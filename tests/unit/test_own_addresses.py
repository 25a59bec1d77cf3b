"""Which addresses name this relay in a domain literal (app_config.own_addresses; issue 13 item 8).

A listener bound to one address adds that address; one bound to 0.0.0.0 or :: adds every
address of the host's interfaces (a fake list here; tests/integration/test_wildcard_listener_literals.py
uses the real interfaces), since it answers on all of them.
"""

from __future__ import annotations

import ipaddress

from mailgate.app_config import own_addresses, policy_settings
from mailgate.config.loader import load_text
from mailgate.policy.relay import RelayPolicy

HOST = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("2001:db8::2"))


def _config(*addresses: str):
    listeners = "".join(
        f'[[listener]]\nname = "l{i}"\naddress = "{address}"\ntls = "none"\n\n' for i, address in enumerate(addresses)
    )
    return load_text(f'[server]\nspool_dir = "/nonexistent"\n\n{listeners}[[domain]]\nname = "example.test"\n'
                     'next_hop = ["127.0.0.1:2526"]\n', source="<test>")


def _no_interfaces() -> tuple:
    raise AssertionError("interfaces asked for without a wildcard listener")


def test_a_listener_on_one_address_adds_only_that_address() -> None:
    assert own_addresses(_config("198.51.100.1:25", "[2001:db8::1]:25"), _no_interfaces) == (
        ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("2001:db8::1"))


def test_a_wildcard_listener_adds_every_interface_address() -> None:
    for wildcard in ("0.0.0.0:25", "[::]:25"):
        assert own_addresses(_config(wildcard, "198.51.100.1:587"), lambda: HOST) == HOST + (
            ipaddress.ip_address("198.51.100.1"),)


def test_the_policy_takes_every_interface_address_as_this_relay() -> None:
    policy = RelayPolicy(policy_settings(_config("0.0.0.0:25"), lambda: HOST))
    for address in HOST:
        assert policy.names_this_relay(address)
    assert not policy.names_this_relay(ipaddress.ip_address("192.0.2.3"))
