"""Screener benchmark: messages screened per second with the screener off, attachment rules on,
and clamd on.

Usage: python bench/screen_bench.py [--seconds N] [--concurrency C] [--json]

The message mix is the real-shaped samples of tests/data/mime plus one message with a 1 MiB
base64 attachment (sizes are printed). For each configuration, C asyncio tasks call
`Screener.screen` on messages held in memory (the spool's in-memory case) for N seconds:
- off:          no rules, no engines (`needs_message` is False: nothing is parsed);
- header rules: a subject and a sender rule (only the header section is read);
- attachment rules: extension, sniffed executables and names inside zips (a full MIME walk);
- clamd:        attachment rules plus a private clamd (Debian's clamav-daemon, started from
  tests/support/clamd.py over its unix socket); skipped when clamd is not installed.
Must not: be imported by mailgate; it is a tool for people.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import shutil
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailgate.screen import Screener, ScreenContext  # noqa: E402
from tests.support.clamd import start_clamd  # noqa: E402
from tests.support.screening import screener_from  # noqa: E402

SAMPLES = ROOT / "tests" / "data" / "mime"
CTX = ScreenContext("inbound", "anna@corp.example", ["ben@hosted.test"], "192.0.2.7", "mx.corp.example")
ATTACHMENT_RULES = [
    {"name": "strip-exe", "direction": "inbound", "action": "strip", "extension": ["exe", "scr", "com"]},
    {"name": "hold-exe-in-zip", "direction": "inbound", "action": "quarantine", "extension": ["exe"],
     "in_zip": True},
    {"name": "tag-executables", "direction": "inbound", "action": "tag", "sniffed_type": ["executable"]},
]
HEADER_RULES = [
    {"name": "lottery", "direction": "inbound", "action": "tag", "subject": ["gewonnen", "lottery"]},
    {"name": "bad-sender", "direction": "inbound", "action": "reject", "sender_domain": ["evil.example"]},
]


def big_message(size: int = 1024 * 1024) -> bytes:
    body = base64.encodebytes(bytes(range(256)) * (size // 256)).replace(b"\n", b"\r\n")
    return (b"From: a@corp.example\r\nTo: ben@hosted.test\r\nSubject: large\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="big"\r\n\r\n--big\r\nContent-Type: text/plain\r\n\r\n'
            b"see attached\r\n--big\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"--big--\r\n")


def messages() -> list[bytes]:
    return [path.read_bytes() for path in sorted(SAMPLES.glob("*.eml"))] + [big_message()]


async def _run(screener: Screener, mix: list[bytes], seconds: float, concurrency: int) -> dict[str, float]:
    count = 0
    octets = 0
    deadline = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal count, octets
        index = offset
        while time.monotonic() < deadline:
            data = mix[index % len(mix)]
            await screener.screen(CTX, lambda data=data: io.BytesIO(data), len(data))
            count += 1
            octets += len(data)
            index += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(offset) for offset in range(concurrency)))
    elapsed = time.monotonic() - started
    return {"messages_per_s": count / elapsed, "mib_per_s": octets / elapsed / 2**20, "messages": count}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    mix = messages()
    results: dict[str, dict[str, float] | str] = {}
    configurations = {
        "off": screener_from([]),
        "header rules": screener_from(HEADER_RULES),
        "attachment rules": screener_from(ATTACHMENT_RULES),
    }
    for name, screener in configurations.items():
        results[name] = asyncio.run(_run(screener, mix, args.seconds, args.concurrency))
    clamd_binary = shutil.which("clamd") or "/usr/sbin/clamd"
    if Path(clamd_binary).exists():
        with start_clamd(clamd_binary, _free_port()) as clamd:
            screener = screener_from(ATTACHMENT_RULES, {"clamd": clamd.unix_address})
            results["attachment rules + clamd"] = asyncio.run(_run(screener, mix, args.seconds, args.concurrency))
    else:
        results["attachment rules + clamd"] = "skipped: clamd not installed"
    if args.json:
        print(json.dumps({"message_sizes": [len(m) for m in mix], "results": results}, indent=2))
        return
    print(f"mix: {len(mix)} messages, sizes {sorted(len(m) for m in mix)} octets; "
          f"{args.concurrency} concurrent screens, {args.seconds:g}s each")
    for name, result in results.items():
        if isinstance(result, str):
            print(f"{name:28s} {result}")
        else:
            print(f"{name:28s} {result['messages_per_s']:10.0f} msg/s {result['mib_per_s']:8.1f} MiB/s")


if __name__ == "__main__":
    main()
