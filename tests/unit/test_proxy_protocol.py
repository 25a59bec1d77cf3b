"""The PROXY protocol parser: byte-exact v1 and v2 headers, strict refusals, bounded reads."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.server.proxy_protocol import (
    MAX_V2_PAYLOAD,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    NeedMore,
    ProxyError,
    ProxyHeader,
    ProxyProtocolError,
    parse,
    proxy_peer_allowed,
    read_proxy_header,
)

pytestmark = pytest.mark.timeout(30)

SMTP_BYTES = b"EHLO client.test\r\n"


def v2(command: int, family: int, payload: bytes, *, version: int = 2) -> bytes:
    return V2_SIGNATURE + bytes([(version << 4) | command, family]) + struct.pack("!H", len(payload)) + payload


def inet4(source: str, dest: str, sport: int, dport: int) -> bytes:
    return ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address(dest).packed + struct.pack("!HH", sport, dport)


def inet6(source: str, dest: str, sport: int, dport: int) -> bytes:
    return ipaddress.IPv6Address(source).packed + ipaddress.IPv6Address(dest).packed + struct.pack("!HH", sport, dport)


# --- version 1 ------------------------------------------------------------------------------------

def test_v1_tcp4_gives_addresses_and_leaves_the_smtp_bytes() -> None:
    result = parse(b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 25\r\n" + SMTP_BYTES)
    assert result == ProxyHeader(1, ("203.0.113.7", 56324), ("192.0.2.1", 25), SMTP_BYTES)


def test_v1_tcp6_normalises_the_address_text() -> None:
    result = parse(b"PROXY TCP6 2001:DB8:0:0::7 2001:db8::1 65535 0\r\n")
    assert result == ProxyHeader(1, ("2001:db8::7", 65535), ("2001:db8::1", 0), b"")


def test_v1_unknown_ignores_the_rest_of_the_line() -> None:
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyHeader(1, None, None, b"")
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nQUIT\r\n") == ProxyHeader(1, None, None, b"QUIT\r\n")


def test_v1_longest_header_is_accepted_and_one_byte_more_refused() -> None:
    longest = b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - len(b"PROXY UNKNOWN ") - 2) + b"\r\n"
    assert len(longest) == V1_MAX_LENGTH
    assert isinstance(parse(longest), ProxyHeader)
    too_long = longest[:-2] + b"x\r\n"
    assert isinstance(parse(too_long), ProxyError)


def test_v1_without_crlf_needs_more_until_the_cap() -> None:
    assert parse(b"PROXY TCP4 203.0.113.7") == NeedMore(1)
    assert parse(b"PRO") == NeedMore(1)
    assert isinstance(parse(b"PROXY " + b"1" * (V1_MAX_LENGTH - 6)), ProxyError)


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 25\n",  # bare LF
        b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 25\rX",  # bare CR
        b"PROXY TCP4  203.0.113.7 192.0.2.1 56324 25\r\n",  # double space
        b"PROXY TCP4 203.0.113.7 192.0.2.1 56324\r\n",  # a port missing
        b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 25 extra\r\n",
        b"PROXY TCP4 2001:db8::7 192.0.2.1 56324 25\r\n",  # IPv6 in TCP4
        b"PROXY TCP6 203.0.113.7 2001:db8::1 56324 25\r\n",  # IPv4 in TCP6
        b"PROXY TCP6 fe80::1%eth0 2001:db8::1 56324 25\r\n",  # scope id
        b"PROXY TCP4 203.0.113.007 192.0.2.1 56324 25\r\n",  # leading zero in the address
        b"PROXY TCP4 203.0.113.7 192.0.2.1 056324 25\r\n",  # leading zero in the port
        b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 25\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 -1 25\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 +1 25\r\n",
        b"PROXY TCP4 mx.example 192.0.2.1 1 25\r\n",
        b"PROXY UDP4 203.0.113.7 192.0.2.1 56324 25\r\n",
        b"PROXY tcp4 203.0.113.7 192.0.2.1 56324 25\r\n",
        b"proxy TCP4 203.0.113.7 192.0.2.1 56324 25\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 5\xd9\xa3 25\r\n",  # non-ASCII digit
        b"PROXY\r\n",
    ],
)
def test_v1_malformed_headers_are_refused(header: bytes) -> None:
    assert isinstance(parse(header), ProxyError), header


def test_a_plain_smtp_client_is_refused_at_once() -> None:
    assert isinstance(parse(b"EHLO client.test\r\n"), ProxyError)
    assert isinstance(parse(b"E"), ProxyError)  # no need to wait for more to know


# --- version 2 ------------------------------------------------------------------------------------

def test_v2_proxy_tcp4() -> None:
    header = v2(0x1, 0x11, inet4("203.0.113.7", "192.0.2.1", 56324, 25))
    assert parse(header + SMTP_BYTES) == ProxyHeader(2, ("203.0.113.7", 56324), ("192.0.2.1", 25), SMTP_BYTES)


def test_v2_proxy_tcp6_with_tlvs() -> None:
    tlvs = bytes([0x05]) + struct.pack("!H", 4) + b"\x00\x00\x00\x01"  # PP2_TYPE_UNIQUE_ID
    tlvs += bytes([0xEA]) + struct.pack("!H", 0)  # an AWS-style TLV, empty
    header = v2(0x1, 0x21, inet6("2001:db8::7", "2001:db8::1", 1, 587) + tlvs)
    assert parse(header) == ProxyHeader(2, ("2001:db8::7", 1), ("2001:db8::1", 587), b"")


def test_v2_local_uses_the_real_endpoints() -> None:
    assert parse(v2(0x0, 0x00, b"")) == ProxyHeader(2, None, None, b"")
    # LOCAL skips whatever address block is there.
    assert parse(v2(0x0, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2)) + b"X") == ProxyHeader(2, None, None, b"X")


def test_v2_unspec_and_unix_families_give_no_address() -> None:
    assert parse(v2(0x1, 0x00, b"")) == ProxyHeader(2, None, None, b"")
    assert parse(v2(0x1, 0x31, b"/run/a".ljust(108, b"\0") + b"/run/b".ljust(108, b"\0"))) == ProxyHeader(
        2, None, None, b""
    )


def test_v2_needs_exactly_the_missing_bytes() -> None:
    header = v2(0x1, 0x11, inet4("203.0.113.7", "192.0.2.1", 56324, 25))
    assert parse(header[:5]) == NeedMore(16 - 5)
    assert parse(header[:16]) == NeedMore(12)
    assert parse(header[:20]) == NeedMore(8)


@pytest.mark.parametrize(
    "header",
    [
        v2(0x1, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2), version=1),
        v2(0x1, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2), version=3),
        v2(0x2, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2)),  # unknown command
        v2(0x1, 0x12, inet4("1.2.3.4", "5.6.7.8", 1, 2)),  # UDP
        v2(0x1, 0x10, inet4("1.2.3.4", "5.6.7.8", 1, 2)),  # INET, unspecified transport
        v2(0x1, 0x41, inet4("1.2.3.4", "5.6.7.8", 1, 2)),  # unknown family
        v2(0x1, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2)[:11]),  # block too short
        v2(0x1, 0x21, inet4("1.2.3.4", "5.6.7.8", 1, 2)),  # INET6 with an INET block
        v2(0x1, 0x31, b"/run/a"),  # UNIX block too short
        v2(0x1, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2) + b"\x05\x00"),  # truncated TLV
        v2(0x1, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2) + b"\x05\x00\x09abc"),  # TLV runs past
        b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4),  # wrong signature
    ],
)
def test_v2_malformed_headers_are_refused(header: bytes) -> None:
    assert isinstance(parse(header), ProxyError), header


def test_v2_length_is_capped_before_buffering() -> None:
    fixed = V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", MAX_V2_PAYLOAD + 1)
    assert isinstance(parse(fixed), ProxyError)  # refused from the 16 fixed bytes alone
    at_cap = v2(0x1, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2) + b"\x05" + struct.pack("!H", MAX_V2_PAYLOAD - 15) + bytes(MAX_V2_PAYLOAD - 15))
    assert isinstance(parse(at_cap), ProxyHeader)


# --- properties -----------------------------------------------------------------------------------

@given(st.binary(max_size=300))
def test_any_bytes_give_a_result_and_never_raise(data: bytes) -> None:
    result = parse(data)
    assert isinstance(result, (NeedMore, ProxyHeader, ProxyError))
    if isinstance(result, NeedMore):
        assert result.minimum >= 1 and len(data) < len(V2_SIGNATURE) + 4 + MAX_V2_PAYLOAD


@given(
    st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 65535), st.integers(0, 65535),
    st.binary(max_size=40), st.booleans(),
)
def test_headers_round_trip_whatever_follows(source, dest, sport, dport, rest, binary) -> None:
    if binary:
        header = v2(0x1, 0x11, inet4(str(source), str(dest), sport, dport))
    else:
        header = f"PROXY TCP4 {source} {dest} {sport} {dport}\r\n".encode()
    expected = ProxyHeader(2 if binary else 1, (str(source), sport), (str(dest), dport), rest)
    assert parse(header + rest) == expected
    # Fed byte by byte as the adapter does, never asked to read past the header.
    buffer = b""
    while isinstance(step := parse(buffer), NeedMore):
        buffer += header[len(buffer):len(buffer) + step.minimum]
        assert len(buffer) <= len(header)
    assert step == ProxyHeader(expected.version, expected.source, expected.dest, b"")


# --- the asyncio adapter and the peer check --------------------------------------------------------

def _reader_with(data: bytes, *, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def test_read_proxy_header_leaves_the_smtp_stream_untouched() -> None:
    async def scenario() -> tuple[ProxyHeader, bytes, ProxyHeader, bytes]:
        reader = _reader_with(b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 25\r\n" + SMTP_BYTES)
        first = await read_proxy_header(reader.read, 5)
        after_first = await reader.read()
        reader = _reader_with(v2(0x1, 0x11, inet4("203.0.113.8", "192.0.2.1", 1, 25)) + SMTP_BYTES)
        second = await read_proxy_header(reader.read, 5)
        return first, after_first, second, await reader.read()

    first, after_first, second, after_second = asyncio.run(scenario())
    assert first.source == ("203.0.113.7", 56324) and first.rest == b""
    assert after_first == SMTP_BYTES
    assert second.source == ("203.0.113.8", 1) and after_second == SMTP_BYTES


def test_read_proxy_header_errors() -> None:
    async def scenario(data: bytes, eof: bool = True) -> None:
        await read_proxy_header(_reader_with(data, eof=eof).read, 0.2)

    with pytest.raises(ProxyProtocolError):
        asyncio.run(scenario(b"EHLO x\r\n"))
    with pytest.raises(asyncio.IncompleteReadError):
        asyncio.run(scenario(b"PROXY TCP4 1.2.3.4"))
    with pytest.raises(TimeoutError):
        asyncio.run(scenario(b"PROXY TCP4 1.2.3.4", eof=False))


def test_only_configured_load_balancers_may_send_a_header() -> None:
    networks = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("2001:db8:1::/48")]
    assert proxy_peer_allowed("10.0.0.9", networks)
    assert proxy_peer_allowed("::ffff:10.0.0.9", networks)
    assert proxy_peer_allowed("2001:db8:1::5", networks)
    assert not proxy_peer_allowed("10.0.1.9", networks)
    assert not proxy_peer_allowed("2001:db8:2::5", networks)
    assert not proxy_peer_allowed("not an address", networks)
    assert not proxy_peer_allowed("10.0.0.9", [])
