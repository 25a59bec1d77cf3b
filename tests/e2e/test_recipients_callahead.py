"""Call-ahead recipient validation against real Postfix as the internal server.

Postfix knows only some mailboxes (virtual_mailbox_maps) and refuses the others with 550 5.1.1
at RCPT. mailgate asks it at RCPT time with `MAIL FROM:<>` / `RCPT TO` and never DATA: found
is 250, unknown is 550 5.1.1, the cache answers a second time without a connection, concurrent
probes of one address share one connection, and Postfix stopped gives 451 4.4.3.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import free_port, require_binary
from tests.support.mailgate_server import InProcessMailgate
from tests.support.postfix import start_receiver
from tests.support.receiving import HOSTED, config_text, rcpt_replies

pytestmark = pytest.mark.e2e


def connections(postfix) -> int:
    """Sessions Postfix's smtpd finished (it logs `disconnect from` once each)."""
    return postfix.maillog().count(" disconnect from ")


def settle(postfix, expected: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while connections(postfix) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # and nothing more arrives
    return connections(postfix)


def callahead_config(tmp_path, postfix_port: int) -> str:
    text = config_text(tmp_path)
    head, _, tail = text.partition("[[domain]]")
    domain = f'[[domain]]\nname = "{HOSTED}"\nnext_hop = ["127.0.0.1:{postfix_port}"]\ntls = "none"\nrecipient_sources = ["internal"]\n'
    rest = tail.split("\n\n", 1)[1]  # drop the helper's own domain table
    return head + domain + "\n" + rest + """
[[recipient_source]]
name = "internal"
type = "callahead"
timeout = "3s"
positive_ttl = "1h"
negative_ttl = "10m"
"""


def test_call_ahead_against_real_postfix(tmp_path) -> None:
    require_binary("postfix")
    port = free_port()
    postfix = start_receiver(port, [HOSTED], mailboxes=[f"alice@{HOSTED}", f"bob@{HOSTED}"])
    try:
        base = settle(postfix, 1)  # the harness's own banner check
        with InProcessMailgate(callahead_config(tmp_path, port)) as mg:
            mx = mg.port("mx")
            first = mg.call(rcpt_replies(mx, [f"alice@{HOSTED}", f"nobody@{HOSTED}"]))
            assert first[0].startswith("250"), first
            assert first[1] == f"550 5.1.1 <nobody@{HOSTED}>: Recipient address rejected: User unknown"
            assert settle(postfix, base + 2) == base + 2

            # The cache answers both, positive and negative: no new connection.
            again = mg.call(rcpt_replies(mx, [f"ALICE@{HOSTED}", f"nobody@{HOSTED}"]))
            assert again[0].startswith("250") and again[1].startswith("550 5.1.1")
            assert settle(postfix, base + 3, timeout=2) == base + 2

            # Twenty sessions asking for one new address at once: one probe.
            async def crowd() -> list[list[str]]:
                return await asyncio.gather(*(rcpt_replies(mx, [f"bob@{HOSTED}"]) for _ in range(20)))
            replies = mg.call(crowd())
            assert all(reply[0].startswith("250") for reply in replies), replies
            assert settle(postfix, base + 3) == base + 3

            # A probe never sends DATA: Postfix delivered nothing and queued nothing.
            assert postfix.delivered() == []
            assert " DATA" not in postfix.maillog()

            postfix.stop()
            down = mg.call(rcpt_replies(mx, [f"carol@{HOSTED}", f"alice@{HOSTED}"]))
            assert down[0].startswith("451 4.4.3"), down  # unknown to the cache: ask later
            assert down[1].startswith("250")  # known from the cache
    finally:
        postfix.stop()
