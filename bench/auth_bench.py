"""Message-authentication benchmark: the CPU cost of DKIM signing and of the inbound checks.

Usage: python bench/auth_bench.py [--messages N] [--size BYTES] [--json]

For a message of SIZE bytes (default 4 KiB, the end-to-end benchmark's small size) it measures,
in one process and with DNS answered from memory (a StaticResolver behind the checks' cache, so
the figures are the checks' own cost, not a network's):
- sign rsa / sign ed25519 / sign both: `DkimSigner.sign`, the work done per outbound message;
- inbound: `Authenticator.check` + `finish` (SPF of MAIL FROM and HELO, two DKIM signatures,
  DMARC, ARC, the Authentication-Results header), N messages with 8 in flight, as the session
  runs them (worker threads, DNS on the loop).
Must not: be imported by mailgate; it is a tool for people.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailgate.auth.authenticator import Authenticator  # noqa: E402
from mailgate.auth.dkim_keys import generate_private_key, key_from_bytes  # noqa: E402
from mailgate.auth.dkim_sign import DkimSigner, SigningKey  # noqa: E402
from mailgate.auth.dmarc import OrganizationalDomains  # noqa: E402
from mailgate.auth.dns_cache import CachingResolver  # noqa: E402
from mailgate.auth.inbound import InboundChecker, InboundSettings  # noqa: E402
from mailgate.auth.message import Origin  # noqa: E402
from mailgate.config.schema import DKIM  # noqa: E402
from mailgate.dns.resolver import StaticResolver  # noqa: E402

IN_FLIGHT = 8


def message(size: int) -> bytes:
    head = (b"From: Anna <anna@corp.example>\r\nTo: ben@partner.example\r\nSubject: Quarterly figures\r\n"
            b"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <q4@corp.example>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n")
    line = b"The figures for the fourth quarter are attached to this message.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def per_message(function, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        function()
    return (time.perf_counter() - started) / count


async def inbound(signed: bytes, zone: dict, count: int) -> tuple[float, list[float]]:
    settings = InboundSettings(authserv_id="bench.test")
    checker = InboundChecker(settings, CachingResolver(StaticResolver(zone), 300), OrganizationalDomains(),
                             lambda domain: domain == "hosted.test")
    authenticator = Authenticator(None, checker)
    origin = Origin("192.0.2.7", "mail.corp.example", "anna@corp.example", internal=False)
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def worker() -> None:
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            verdict = await authenticator.check(signed, origin)
            await authenticator.finish(signed, verdict)
            latencies.append(time.perf_counter() - started)
            assert verdict.reply is None, verdict

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    elapsed = time.perf_counter() - started
    authenticator.close()
    return count / elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    raw = message(args.size)
    rsa = key_from_bytes(generate_private_key("rsa"), "corp.example", "r1")
    ed = key_from_bytes(generate_private_key("ed25519"), "corp.example", "e1")
    headers = DKIM.key("sign_headers").default, DKIM.key("oversign_headers").default
    signers = {"rsa": DkimSigner([SigningKey(rsa)], *headers), "ed25519": DkimSigner([SigningKey(ed)], *headers),
               "both": DkimSigner([SigningKey(rsa), SigningKey(ed)], *headers)}
    figures: dict[str, float] = {"size": len(raw)}
    for name, signer in signers.items():
        figures[f"sign_{name}_ms"] = per_message(lambda: signer.sign(raw), args.messages) * 1000
    zone = {
        "corp.example": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
        "mail.corp.example": {"TXT": ["v=spf1 a -all"], "A": ["192.0.2.7"]},
        "_dmarc.corp.example": {"TXT": ["v=DMARC1; p=reject"]},
        rsa.record_name: {"TXT": [rsa.txt_record()]}, ed.record_name: {"TXT": [ed.txt_record()]},
    }
    signed = signers["both"].sign(raw)[0] + raw
    rate, latencies = asyncio.run(inbound(signed, zone, args.messages))
    latencies.sort()
    figures["inbound_per_s"] = rate
    figures["inbound_p50_ms"] = statistics.median(latencies) * 1000
    figures["inbound_p99_ms"] = latencies[int(len(latencies) * 0.99) - 1] * 1000
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"message size {len(raw)} bytes, {args.messages} messages")
    for name in signers:
        print(f"  sign {name:8} {figures[f'sign_{name}_ms']:7.2f} ms/message")
    print(f"  inbound checks  {rate:7.0f} messages/s ({IN_FLIGHT} in flight), "
          f"p50 {figures['inbound_p50_ms']:.1f} ms, p99 {figures['inbound_p99_ms']:.1f} ms")


if __name__ == "__main__":
    main()
