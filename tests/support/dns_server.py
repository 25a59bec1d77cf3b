"""A real DNS server on loopback, serving test zone data over UDP and TCP on one port.

Owns: answering DNS queries from zone data in the format of `mailgate.dns.resolver.static_answer`
(so the static fake and this server answer alike), over UDP and TCP (RFC 1035 §4.2, RFC 7766), with
the TC bit set on UDP answers that do not fit the client's size (512 bytes, or its EDNS payload,
RFC 6891 §6.2.5), SERVFAIL and "never answer" names on demand, and a log of the queries received.
Must not: recurse, forward, or build wire format by hand (dnspython's `dns.message` does it).

It runs its own asyncio loop in a background thread, so both plain and `asyncio.run` tests use it.
Negative answers carry no SOA (the resolvers under test do not cache).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

from mailgate.dns.resolver import ZoneData, static_answer

# RFC 1035 §4.2.1: without EDNS, UDP messages are limited to 512 bytes.
CLASSIC_UDP_LIMIT = 512
# RFC 1035 §4.2.2: a TCP message is prefixed by its two-byte length.
TCP_LIMIT = 65535
TTL = 300
START_TIMEOUT = 5.0
BIND_ATTEMPTS = 20


def _rdata(rdtype: str, value: Any) -> dns.rdata.Rdata:
    kind = dns.rdatatype.from_text(rdtype)
    if kind == dns.rdatatype.TXT:
        # RFC 1035 §3.3.14: a record of character-strings of at most 255 octets each.
        text = str(value).encode("utf-8")
        strings = [text[i:i + 255] for i in range(0, len(text), 255)] or [b""]
        return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, kind, strings)
    if kind == dns.rdatatype.MX:
        preference, exchange = value
        text = f"{int(preference)} {dns.name.from_text(exchange).to_text()}"
        return dns.rdata.from_text(dns.rdataclass.IN, kind, text)
    return dns.rdata.from_text(dns.rdataclass.IN, kind, str(value))


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: LoopbackDnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self._server.answer(data, "udp")
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)


class LoopbackDnsServer:
    """Authoritative for every name: absent names are NXDOMAIN (see `static_answer`).

    `queries` lists (name, type, "udp" | "tcp") for each query received, in order.
    """

    def __init__(self, records: ZoneData, host: str = "127.0.0.1", port: int = 0) -> None:
        self.records = dict(records)
        self.host = host
        self.port = port  # 0: a free port
        self.queries: list[tuple[str, str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._tcp_clients: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}

    # --- answering (called on the server thread) -------------------------------------------------
    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The reply to one query message, or None to stay silent (TIMEOUT names, garbage)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = question.name.to_text()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name.rstrip(".").lower() or ".", rdtype, transport))
        outcome = static_answer(self.records, name, rdtype)
        if outcome == "TIMEOUT":
            return None
        if outcome == "SERVFAIL":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif outcome == "NXDOMAIN":
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif outcome:
            rdatas = [_rdata(rdtype, value) for value in outcome]
            response.answer.append(dns.rrset.from_rdata_list(question.name, TTL, rdatas))
        return response.to_wire(max_size=self._size_limit(query, transport), prefer_truncation=True)

    @staticmethod
    def _size_limit(query: dns.message.Message, transport: str) -> int:
        if transport == "tcp":
            return TCP_LIMIT
        if query.edns >= 0:
            return max(CLASSIC_UDP_LIMIT, query.payload)  # RFC 6891 §6.2.5
        return CLASSIC_UDP_LIMIT

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tcp_clients[writer] = task
        try:
            while True:
                length = int.from_bytes(await reader.readexactly(2), "big")
                reply = self.answer(await reader.readexactly(length), "tcp")
                if reply is not None:
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tcp_clients.pop(writer, None)
            writer.close()

    # --- life cycle --------------------------------------------------------------------------------
    def _bind_pair(self) -> tuple[socket.socket, socket.socket]:
        """A UDP and a TCP socket bound to the same free port (bounded retries on a clash)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(BIND_ATTEMPTS):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((self.host, self.port))
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                tcp.bind((self.host, udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            return udp, tcp
        raise OSError("no port free for both UDP and TCP")

    def start(self) -> LoopbackDnsServer:
        udp, tcp = self._bind_pair()
        self.port = udp.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(udp, tcp), daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError("loopback DNS server did not start")
        return self

    def _run(self, udp: socket.socket, tcp: socket.socket) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main(udp, tcp))
        finally:
            self._loop.close()

    async def _main(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        datagrams, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
        stream_server = await asyncio.start_server(self._serve_tcp, sock=tcp)
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            datagrams.close()
            stream_server.close()
            clients = dict(self._tcp_clients)
            for writer in clients:  # Server.close_clients() is Python 3.13+
                writer.close()
            await asyncio.gather(*clients.values(), return_exceptions=True)
            await stream_server.wait_closed()

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(START_TIMEOUT)
        self._thread = None

    def __enter__(self) -> LoopbackDnsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
