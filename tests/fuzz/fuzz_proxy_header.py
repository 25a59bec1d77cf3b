"""Coverage-guided fuzzing of the PROXY protocol header parser (server/proxy_protocol.py),
versions 1 and 2, and of the check of which peers may send one.

The input is what a load balancer (or an attacker) sends before the SMTP stream.

Invariants checked (an AssertionError is a finding):
- `parse` never raises: it returns NeedMore, ProxyHeader or ProxyError;
- a ProxyHeader's `rest` is what follows the header in the input; the header is at most 107
  octets for version 1 (spec §2.1) and 16 + MAX_V2_PAYLOAD for version 2, and starts with the
  version's signature;
- reading as `read_proxy_header` does, `NeedMore.minimum` octets at a time, never reads past
  the header and ends with the same result as parsing the whole input at once;
- addresses are canonical IP text of the version the header names, ports are 0-65535; a
  version 1 TCP4 header is exactly the text its fields give back;
- `proxy_peer_allowed` never raises for any peer text.
"""

from __future__ import annotations

import ipaddress
import sys

import atheris

with atheris.instrument_imports(include=["mailgate"]):
    from mailgate.server.proxy_protocol import (
        MAX_V2_PAYLOAD, V1_MAX_LENGTH, V1_PREFIX, V2_FIXED_LENGTH, V2_SIGNATURE, NeedMore, ProxyError,
        ProxyHeader, parse, proxy_peer_allowed,
    )

NETWORKS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")]


class Finding(AssertionError):
    """An invariant of the PROXY header parser does not hold."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise Finding(message)


def check_endpoint(endpoint: tuple[str, int] | None, version: int | None) -> None:
    if endpoint is None:
        return
    ip, port = endpoint
    address = ipaddress.ip_address(ip)  # must be an IP address
    check(str(address) == ip, f"address {ip!r} is not canonical")
    check(version is None or address.version == version, f"{ip} in a header for IPv{version}")
    check(0 <= port <= 65535, f"port {port}")


def read_incrementally(data: bytes) -> tuple[object, int]:
    """What `read_proxy_header` does: read exactly `minimum` more octets while asked."""
    buffer = b""
    for _ in range(len(data) + 2):
        result = parse(buffer)
        if not isinstance(result, NeedMore):
            return result, len(buffer)
        check(result.minimum >= 1, f"NeedMore({result.minimum})")
        if len(buffer) + result.minimum > len(data):
            return result, len(buffer)  # the peer would still be sending
        buffer = data[:len(buffer) + result.minimum]
    raise Finding("the incremental read did not settle")


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    whole = parse(data)
    check(isinstance(whole, (NeedMore, ProxyHeader, ProxyError)), f"parse returned {whole!r}")
    stepwise, read = read_incrementally(data)
    if isinstance(whole, ProxyHeader):
        check(data.endswith(whole.rest), "rest is not what follows the header")
        length = len(data) - len(whole.rest)
        if whole.version == 1:
            check(data.startswith(V1_PREFIX) and length <= V1_MAX_LENGTH, f"version 1 header of {length}")
            check(data[length - 2:length] == b"\r\n", "version 1 header not ended by CRLF")
        else:
            check(whole.version == 2 and data.startswith(V2_SIGNATURE), "version 2 without its signature")
            check(V2_FIXED_LENGTH <= length <= V2_FIXED_LENGTH + MAX_V2_PAYLOAD, f"version 2 header of {length}")
        check(isinstance(stepwise, ProxyHeader), f"whole input: header; read stepwise: {stepwise!r}")
        check(read == length and stepwise.rest == b"", f"read {read} octets for a header of {length}")
        check((stepwise.version, stepwise.source, stepwise.dest) == (whole.version, whole.source, whole.dest),
              "stepwise and whole parse disagree")
        family = None
        if whole.version == 1:
            family = 4 if data.startswith(b"PROXY TCP4 ") else 6 if data.startswith(b"PROXY TCP6 ") else None
        check_endpoint(whole.source, family)
        check_endpoint(whole.dest, family)
        check((whole.source is None) == (whole.dest is None), "one endpoint without the other")
        if family == 4 and whole.source and whole.dest:
            text = f"PROXY TCP4 {whole.source[0]} {whole.dest[0]} {whole.source[1]} {whole.dest[1]}\r\n"
            check(data[:length] == text.encode(), f"TCP4 header {data[:length]!r} is not canonical")
    elif isinstance(whole, ProxyError):
        # Stepwise reading may still be waiting for octets the input does not have.
        check(isinstance(stepwise, ProxyError) or (isinstance(stepwise, NeedMore) and read + stepwise.minimum > len(data)),
              f"whole input: error {whole.reason!r}; read stepwise: {stepwise!r}")
        check(whole.reason, "an error without a reason")
    else:
        check(isinstance(stepwise, NeedMore), f"whole input: need more; read stepwise: {stepwise!r}")
    if len(data) <= 64:
        proxy_peer_allowed(data.decode("latin-1"), NETWORKS)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
