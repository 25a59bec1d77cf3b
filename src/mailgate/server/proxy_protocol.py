"""The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2), read before the greeting.

Owns: a sans-IO, strict parser `parse(buffer) -> NeedMore | ProxyHeader | ProxyError` for the
text header of version 1 (TCP4, TCP6, UNKNOWN) and the binary header of version 2 (PROXY and LOCAL
commands; INET and INET6 stream addresses; UNSPEC), bounded in size (version 1: 107 bytes, spec
§2.1; version 2: `MAX_V2_PAYLOAD`), plus `read_proxy_header`, the thin asyncio adapter a listener
awaits, and `proxy_peer_allowed`, the check that only configured load balancers may send one.
Must not: speak SMTP, decide policy, or guess: a listener configured for the PROXY protocol
requires the header, and one that is not never looks for it (spec §2: "the receiver MUST be
configured to only receive the protocol ... and MUST NOT try to guess").

Hand-written because the PyPI parsers we looked at either read the socket themselves or accept
malformed headers (leading zeroes, IPv4 in TCP6, trailing bytes); a header that decides which
client address our relay policy sees must be read exactly.

`NeedMore.minimum` is the number of bytes that can be read without reading past the header, so
the adapter never consumes a byte of the SMTP stream behind it and `ProxyHeader.rest` is only
non-empty when a caller feeds the parser a larger buffer itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Union

V1_PREFIX = b"PROXY "
# Spec §2.1: "a receiver ... knows it can read at most 107 bytes" (the UNKNOWN worst case).
V1_MAX_LENGTH = 107
# Spec §2.2: the 12-byte signature, then version/command, family/protocol and a 16-bit length.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16
# Spec §2.2 allows up to 65535 bytes of addresses and TLVs; load balancers send a few dozen
# (AWS adds a VPC endpoint TLV, HAProxy may add SSL TLVs). A cap keeps a bad peer from making
# us buffer 64 KiB per connection before a greeting.
MAX_V2_PAYLOAD = 2048

_V2_VERSION = 0x2
_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_PROTO_UNSPEC, _PROTO_STREAM = 0x0, 0x1
_INET_ADDRESSES = struct.Struct("!4s4sHH")  # 12 bytes, spec §2.2
_INET6_ADDRESSES = struct.Struct("!16s16sHH")  # 36 bytes, spec §2.2
_UNIX_ADDRESSES_LENGTH = 216  # spec §2.2


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The header is not complete; at least `minimum` more bytes are needed."""

    minimum: int


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header. `source`/`dest` are (ip, port), or None when the sender gave no
    addresses (v1 UNKNOWN, v2 LOCAL or an unspecified/UNIX family): spec §2.1 and §2.2 then say
    to use the connection's real endpoints, i.e. the load balancer's own address."""

    version: int
    source: tuple[str, int] | None
    dest: tuple[str, int] | None
    rest: bytes


@dataclass(frozen=True, slots=True)
class ProxyError:
    """The peer sent something that is not a valid header; the connection must be dropped."""

    reason: str


ParseResult = Union[NeedMore, ProxyHeader, ProxyError]


class ProxyProtocolError(Exception):
    """Raised by `read_proxy_header` for an invalid header (`ProxyError.reason`)."""


def parse(buffer: bytes) -> ParseResult:
    """Parse the header at the start of `buffer`; bytes after it are returned as `rest`."""
    if not buffer:
        return NeedMore(1)
    if buffer[:1] == V1_PREFIX[:1]:
        return _parse_v1(buffer)
    if buffer[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(buffer)
    return ProxyError("no PROXY protocol header")


def _parse_v1(buffer: bytes) -> ParseResult:
    head = buffer[: len(V1_PREFIX)]
    if not V1_PREFIX.startswith(head):
        return ProxyError("not a version 1 header")
    end = buffer.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(buffer) >= V1_MAX_LENGTH:
            return ProxyError(f"version 1 header longer than {V1_MAX_LENGTH} bytes")
        if b"\n" in buffer or b"\r" in buffer[:-1]:
            return ProxyError("version 1 header has a bare CR or LF")
        return NeedMore(1)  # the length of a text line is unknown until its CRLF
    line, rest = buffer[:end], buffer[end + 2:]
    if b"\n" in line or b"\r" in line:  # as when it arrives octet by octet (spec §2.1: one CRLF)
        return ProxyError("version 1 header has a bare CR or LF")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return ProxyError("version 1 header is not ASCII")
    fields = text.split(" ")
    if fields[1:2] == ["UNKNOWN"]:
        # Spec §2.1: with UNKNOWN, the receiver must ignore anything up to the CRLF.
        return ProxyHeader(1, None, None, rest)
    if len(fields) != 6:
        return ProxyError("version 1 header needs protocol, two addresses and two ports")
    _, protocol, source_ip, dest_ip, source_port, dest_port = fields
    expected = {"TCP4": ipaddress.IPv4Address, "TCP6": ipaddress.IPv6Address}.get(protocol)
    if expected is None:
        return ProxyError(f"version 1 protocol {protocol!r} is not TCP4, TCP6 or UNKNOWN")
    try:
        source = (_v1_address(source_ip, expected), _v1_port(source_port))
        dest = (_v1_address(dest_ip, expected), _v1_port(dest_port))
    except ValueError as exc:
        return ProxyError(f"version 1 header: {exc}")
    return ProxyHeader(1, source, dest, rest)


def _v1_address(text: str, expected: type) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if type(address) is not expected or "%" in text:
        raise ValueError(f"{text!r} does not match the protocol")
    return str(address)


def _v1_port(text: str) -> int:
    # Spec §2.1: a decimal 0..65535; we refuse signs, spaces and leading zeroes ("strict").
    if not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        raise ValueError(f"{text!r} is not a port")
    port = int(text)
    if port > 65535:
        raise ValueError(f"{text!r} is not a port")
    return port


def _parse_v2(buffer: bytes) -> ParseResult:
    signature = buffer[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(signature):
        return ProxyError("not a version 2 signature")
    if len(buffer) < V2_FIXED_LENGTH:
        return NeedMore(V2_FIXED_LENGTH - len(buffer))
    version_command, family_protocol, length = struct.unpack_from("!BBH", buffer, len(V2_SIGNATURE))
    if version_command >> 4 != _V2_VERSION:
        return ProxyError(f"version 2 header with version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (_V2_LOCAL, _V2_PROXY):
        return ProxyError(f"version 2 header with unknown command {command}")
    if length > MAX_V2_PAYLOAD:
        return ProxyError(f"version 2 header of {length} bytes exceeds {MAX_V2_PAYLOAD}")
    total = V2_FIXED_LENGTH + length
    if len(buffer) < total:
        return NeedMore(total - len(buffer))
    payload, rest = buffer[V2_FIXED_LENGTH:total], buffer[total:]
    if command == _V2_LOCAL:
        # Spec §2.2: LOCAL (health checks by the proxy itself): skip the block, use real endpoints.
        return ProxyHeader(2, None, None, rest)
    return _v2_addresses(family_protocol >> 4, family_protocol & 0x0F, payload, rest)


def _v2_addresses(family: int, protocol: int, payload: bytes, rest: bytes) -> ParseResult:
    if family == _AF_UNSPEC:
        return ProxyHeader(2, None, None, rest)  # spec §2.2: accept, use the real endpoints
    if family not in (_AF_INET, _AF_INET6, _AF_UNIX):
        return ProxyError(f"version 2 header with unknown address family {family}")
    if protocol != _PROTO_STREAM:
        return ProxyError("version 2 header for a datagram or unspecified transport; SMTP is a stream")
    if family == _AF_UNIX:
        if len(payload) < _UNIX_ADDRESSES_LENGTH:
            return ProxyError("version 2 UNIX address block too short")
        return ProxyHeader(2, None, None, rest)  # no IP address to report: the proxy's own
    layout = _INET_ADDRESSES if family == _AF_INET else _INET6_ADDRESSES
    if len(payload) < layout.size:
        return ProxyError("version 2 address block too short")
    source_raw, dest_raw, source_port, dest_port = layout.unpack_from(payload)
    error = _check_tlvs(payload[layout.size:])
    if error:
        return ProxyError(error)
    source = (str(ipaddress.ip_address(source_raw)), source_port)
    dest = (str(ipaddress.ip_address(dest_raw)), dest_port)
    return ProxyHeader(2, source, dest, rest)


def _check_tlvs(block: bytes) -> str | None:
    """Spec §2.2.x: TLVs are type (1 byte), length (2 bytes), value; they must fill the block."""
    offset = 0
    while offset < len(block):
        if offset + 3 > len(block):
            return "version 2 TLV header truncated"
        (length,) = struct.unpack_from("!H", block, offset + 1)
        offset += 3 + length
        if offset > len(block):
            return "version 2 TLV value runs past the header"
    return None


async def read_proxy_header(receive: Callable[[int], Awaitable[bytes]], timeout: float) -> ProxyHeader:
    """Read exactly one header within `timeout` seconds, no byte beyond it. `receive(n)` gives up
    to n bytes, b"" at the end of the stream: `loop.sock_recv` on the accepted socket, so that
    what follows the header (a TLS ClientHello) stays in the socket for the next protocol.

    Raises ProxyProtocolError for an invalid header, TimeoutError when it does not arrive in
    time, asyncio.IncompleteReadError when the peer closes first.
    """

    async def read() -> ProxyHeader:
        buffer = b""
        while True:
            result = parse(buffer)
            if isinstance(result, ProxyHeader):
                return result
            if isinstance(result, ProxyError):
                raise ProxyProtocolError(result.reason)
            chunk = await receive(result.minimum)
            if not chunk:
                raise asyncio.IncompleteReadError(buffer, None)
            buffer += chunk

    return await asyncio.wait_for(read(), timeout)


def proxy_peer_allowed(
    peer_ip: str,
    networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    """May the connection from `peer_ip` (the socket's peer) carry a PROXY header?"""
    try:
        address = ipaddress.ip_address(peer_ip.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == network.version and address in network for network in networks)
