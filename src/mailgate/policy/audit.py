"""The start-up open-relay check of a relay configuration (SPEC R3).

Owns: the list of configuration shapes that make, or come close to making, an open relay, each
reported as one message naming its configuration key; start-up refuses to run while the list is
not empty, unless the admin set `relay.acknowledge_open_relay = true`.
Must not: read the configuration file (config/ does, and hands over `PolicySettings`), log, exit
the process, or judge individual messages (relay.py does).

What counts as a problem (a trusted network wholly inside INTERNAL_RANGES is never one):
  - a trusted network shorter than /8 (IPv4) or /16 (IPv6): it covers a large part of the
    internet, including 0.0.0.0/0 and ::/0. IPv4-mapped IPv6 networks (::ffff:0:0/96) are judged
    as the IPv4 network they map, so ::ffff:0:0/96 counts as 0.0.0.0/0.
  - any other trusted network shorter than /16 (IPv4) or /32 (IPv6): an organisation's own
    public range is smaller; a shorter one is an ISP's or a whole region's.
INTERNAL_RANGES is an explicit list (not `ipaddress.is_private`, whose meaning changed between
Python patch releases): RFC 1918 private, loopback (RFC 1122 §3.2.1.3), link-local (RFC 3927,
RFC 4291 §2.5.6), IPv6 unique local (RFC 4193). Shared CGNAT space (RFC 6598, 100.64.0.0/10)
is not internal: other customers of the carrier live there.
  - a hosted-domain entry that is a wildcard: "*", "." or empty, anything holding "*", or a
    subdomain wildcard of a top-level domain only (".com" hosts every .com domain). Known gap:
    without the public-suffix list, ".co.uk" is not recognised as a suffix wildcard.
  - `relay.allow_routing_local_parts = true`: the internet may hand the next hop addresses such
    as user%elsewhere@hosted, and a next hop that honours the percent hack relays them.
"""

from __future__ import annotations

import ipaddress

from mailgate.policy.lists import IPNetwork, canonical_network
from mailgate.policy.relay import PolicySettings

ACKNOWLEDGE_KEY = "relay.acknowledge_open_relay"
TRUSTED_NETWORKS_KEY = "relay.trusted_networks"
HOSTED_DOMAIN_KEY = "domain[{index}].name"  # [[domain]] tables, in configuration order
ROUTING_KEY = "relay.allow_routing_local_parts"

# Shortest prefix accepted at all, and for a network not wholly internal (see module docstring).
MIN_PREFIX = {4: 8, 6: 16}
MIN_PUBLIC_PREFIX = {4: 16, 6: 32}

_RUN_ANYWAY = f"set {ACKNOWLEDGE_KEY} = true to run anyway"

INTERNAL_RANGES = tuple(
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
        "fc00::/7", "fe80::/10", "::1/128",
    )
)


def _is_internal(network: IPNetwork) -> bool:
    return any(
        network.version == internal.version
        and network.subnet_of(internal)  # type: ignore[arg-type]
        for internal in INTERNAL_RANGES
    )


def _network_problem(network: IPNetwork) -> str | None:
    judged = canonical_network(network)
    shown = str(network) if judged == network else f"{network} (= {judged})"
    if _is_internal(judged):
        return None
    if judged.prefixlen < MIN_PREFIX[judged.version]:
        return f"{TRUSTED_NETWORKS_KEY}: {shown} makes an open relay; {_RUN_ANYWAY}"
    if judged.prefixlen < MIN_PUBLIC_PREFIX[judged.version]:
        return (
            f"{TRUSTED_NETWORKS_KEY}: {shown} trusts a large public range "
            f"(shorter than /{MIN_PUBLIC_PREFIX[judged.version]}) "
            f"and comes close to an open relay; "
            f"{_RUN_ANYWAY}"
        )
    return None


def _hosted_problem(index: int, name: str) -> str | None:
    key = HOSTED_DOMAIN_KEY.format(index=index)
    text = name.strip()
    if text in ("", ".", "*") or "*" in text:
        return f"{key}: {name!r} is a wildcard that accepts every domain; {_RUN_ANYWAY}"
    if text.startswith(".") and "." not in text[1:].rstrip("."):
        return f"{key}: {name!r} hosts every domain under a top-level domain; {_RUN_ANYWAY}"
    return None


def open_relay_problems(settings: PolicySettings, acknowledged: bool) -> list[str]:
    """Every open-relay problem of `settings`, one message each; empty when `acknowledged`."""
    if acknowledged:
        return []
    problems = [_network_problem(network) for network in settings.trusted_networks]
    hosted = enumerate(settings.hosted_domains.values())
    problems += [_hosted_problem(index, entry.name) for index, entry in hosted]
    if settings.allow_routing_local_parts:
        problems.append(
            f"{ROUTING_KEY}: true lets any client send % ! @ routed addresses to hosted domains, "
            f"an open relay if a next hop honours them; {_RUN_ANYWAY}"
        )
    return [problem for problem in problems if problem is not None]
