"""The built-in local mailbox: a route target that writes each message into a Maildir.

Owns: writing one message durably into `<dir>/new` the Maildir way (write in tmp/, fsync, rename
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
