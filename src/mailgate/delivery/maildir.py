"""The built-in local mailbox: the `Transport` for routes that write each message into a Maildir.

Owns: `MaildirTransport` (one copy per recipient, an outcome each) and writing one message durably into `<dir>/new` the Maildir way (write in tmp/, fsync, rename
into new/, fsync the directory), with Return-Path and Delivered-To prepended. It lets the embedded
default show a message arriving with no other software. Must not: be a mail store (no folders,
no quota, no IMAP): mailgate is a relay (SPEC "Not in scope").
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator
from itertools import count
from pathlib import Path

from mailgate.core.reply import Reply
from mailgate.core.status import Outcome, classify
from mailgate.delivery.request import AttemptResult, DeliveryRequest

_sequence = count()


def _unique_name() -> str:
    # Maildir naming convention: time.unique.host
    now = time.time()
    return f"{int(now)}.M{int(now * 1e6) % 1_000_000}P{os.getpid()}Q{next(_sequence)}.{socket.gethostname()}"


async def deliver_to_maildir(
    directory: str | Path, sender: str, recipient: str, chunks: AsyncIterator[bytes]
) -> Path:
    """Write the message; return its path in new/. Raises OSError on failure (caller defers)."""
    root = Path(directory)
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    name = _unique_name()
    temporary = root / "tmp" / name
    final = root / "new" / name
    header = f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n".encode("utf-8")
    with open(temporary, "wb") as handle:
        handle.write(header)
        async for chunk in chunks:
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, final)
    directory_fd = os.open(root / "new", os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
    return final


class MaildirTransport:
    """Delivers a request to `request.route.maildir`; a failed write defers (RFC 3463 X.3.0)."""

    async def deliver(self, request: DeliveryRequest) -> AttemptResult:
        outcomes: dict[int, Outcome] = {}
        for index, recipient in request.recipients:
            try:
                path = await deliver_to_maildir(
                    request.route.maildir, request.sender, str(recipient.address), request.body()
                )
                reply = Reply(250, "2.0.0", f"Delivered to maildir {path.name}")
            except OSError as exc:
                reply = Reply(451, "4.3.0", f"Maildir write failed: {exc.strerror}")
            outcomes[index] = classify(reply, "localhost")
        return AttemptResult(outcomes, "localhost", None)

    async def close(self) -> None:
        """Nothing is kept open between deliveries."""
