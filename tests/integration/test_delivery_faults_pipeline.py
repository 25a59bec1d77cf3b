"""The faults of issue 12 through mailgate's whole pipeline: listener, queue, runner, transport,
bouncer; the next hop is the strict scriptable hop, the senders' MX a capture server for DSNs.

Message A meets the fault; message B, unrelated, follows to the same next hop. Checked: B
arrives once, intact, with its own sender; A is bounced (one DSN to its sender) only when a 5yz
said so, and otherwise retried and delivered once with no DSN (RFC 3461 §4.1, RFC 3464).
"""

from __future__ import annotations

import asyncio
import email
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.test_delivery import _eventually_empty, config_text, running, send, wait_until
from tests.support.capture_server import CaptureServer
from tests.support.dns_server import LoopbackDnsServer
from tests.support.fault_hop import DROP, Fault, FaultHop

pytestmark = pytest.mark.timeout(120)

ZONE = {"sender.test": {"MX": [(10, "mx.sender.test")]}, "mx.sender.test": {"A": ["127.0.0.1"]}}


def message(name: str) -> bytes:
    return f"From: {name}@sender.test\r\nSubject: {name}\r\nMessage-ID: <{name}@sender.test>\r\n\r\nBody {name}.\r\n".encode()


@pytest.mark.parametrize(
    ("faults", "bounced"),
    [
        ([Fault("RCPT", 550)], True),  # then DATA 554 "no valid recipients", MAIL still held
        ([Fault("RCPT", 451)], False),  # the same, deferred: the retry must not meet a 503
        ([Fault("DATA", 554)], True),
        ([Fault("END_OF_DATA", 451)], False),
        ([Fault("DATA", DROP)], False),
        ([Fault("MAIL", 421)], False),
    ],
    ids=["rcpt-550", "rcpt-451", "data-554", "dot-451", "drop-after-data", "mail-421"],
)
def test_a_fault_harms_only_its_own_message(tmp_path: Path, faults: list[Fault], bounced: bool) -> None:
    async def scenario() -> None:
        with LoopbackDnsServer(ZONE) as dns:
            async with FaultHop(pipelining=True, chunking=True) as hop, CaptureServer() as sender_mx:
                port = free_port()
                config = config_text(tmp_path, port, hosted_hop=f"127.0.0.1:{hop.port}",
                                     dns_port=dns.port, mx_port=sender_mx.port)
                async with running(config) as app:
                    await asyncio.to_thread(send, port, "w@sender.test", ["w@hosted.test"], message("w"))
                    await wait_until(lambda: len(hop.accepted) == 1)  # a pooled connection now
                    hop.arm(*faults)
                    await asyncio.to_thread(send, port, "a@sender.test", ["a@hosted.test"], message("a"))
                    await asyncio.to_thread(send, port, "b@sender.test", ["b@hosted.test"], message("b"))
                    if bounced:
                        await wait_until(lambda: len(sender_mx.completed) == 1, timeout=30)
                    else:
                        await wait_until(lambda: any(m.sender == "a@sender.test" for m in hop.accepted), timeout=30)
                    await wait_until(lambda: any(m.sender == "b@sender.test" for m in hop.accepted), timeout=30)
                    assert await _eventually_empty(app)
                    await asyncio.sleep(0.3)  # anything still on its way would be a duplicate
        by_sender = {m.sender: m for m in hop.accepted}
        assert sorted(m.sender for m in hop.accepted) == (["b@sender.test", "w@sender.test"] if bounced else
                                                            ["a@sender.test", "b@sender.test", "w@sender.test"])
        for name, accepted in by_sender.items():
            local = name.split("@")[0]
            assert accepted.recipients == (f"{local}@hosted.test",)
            assert accepted.body.endswith(message(local)), "a message arrived with another's body or none"
        assert len(sender_mx.completed) == (1 if bounced else 0)
        if bounced:
            (dsn,) = sender_mx.completed
            assert dsn.mail_from == "" and dsn.rcpt_to == ["a@sender.test"]
            report = email.message_from_bytes(dsn.data)
            assert report.get_content_type() == "multipart/report"
            assert "a@hosted.test" in dsn.data.decode(errors="replace")

    asyncio.run(scenario())
