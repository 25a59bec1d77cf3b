"""The IP addresses of this host's network interfaces.

Owns: `interface_addresses()`, every IPv4 and IPv6 address the interfaces hold right now (the
scope of a link-local IPv6 address dropped). A listener bound to 0.0.0.0 or :: answers on all of
them, so each one names this relay in a domain literal (`user@[192.0.2.2]`): relaying it would
loop (issue 13 item 8).
Must not: decide policy (policy/relay.py refuses such literals) or bind anything.

psutil.net_if_addrs() (getifaddrs(3) underneath) lists every address of every interface, IPv6
included. The stdlib alternatives fall short: the SIOCGIFADDR ioctl gives one IPv4 address per
interface and no IPv6, and resolving the host name gives what DNS or /etc/hosts says, not what
the interfaces hold.
"""

from __future__ import annotations

import ipaddress
import socket

import psutil

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def interface_addresses() -> tuple[IPAddress, ...]:
    found: dict[IPAddress, None] = {}  # ordered and without repeats
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                found[ipaddress.ip_address(entry.address.split("%", 1)[0])] = None
    return tuple(found)
