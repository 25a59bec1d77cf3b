"""The incoming-message writer of the embedded store: memory first, a spill file past a threshold.

Owns: `SpoolWriter`, which collects one message's bytes while DATA or BDAT arrives. Up to
`memory_threshold` bytes stay in memory, as the written pieces themselves (joined once, when the
body is read or sealed: a one-piece message is never copied); past it everything goes to
`spool_dir/incoming/<id>` with plain buffered writes. No fsync here: the message becomes durable only when the writer thread
copies it into SQLite and commits (`sqlite_store.py`), and a spill file left behind by a crash is
deleted by `recover()`.
Must not: talk to SQLite, or keep a large message in memory.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

from mailgate.core.envelope import Envelope
from mailgate.queue.store import MessageMeta, MessageWriter

INCOMING_DIRECTORY = "incoming"
FILE_BUFFER_SIZE = 256 * 1024


class WriterClosedError(RuntimeError):
    """write() after discard() or after the message was handed to commit (API misuse)."""


class SpoolWriter(MessageWriter):
    def __init__(self, queue_id: str, incoming_dir: Path, memory_threshold: int) -> None:
        self.queue_id = queue_id
        self.size = 0
        self._incoming_dir = incoming_dir
        self._memory_threshold = memory_threshold
        self._pieces: list[bytes] = []  # immutable, so keeping them is safe
        self._held = 0  # octets in `_pieces`
        self._file: BinaryIO | None = None
        self._spill_path: Path | None = None
        self._sealed = False
        self._discarded = False

    @property
    def spill_path(self) -> Path | None:
        """The spill file, or None while the whole message is in memory."""
        return self._spill_path

    def write(self, data: bytes) -> None:
        if self._sealed or self._discarded:
            raise WriterClosedError(f"message {self.queue_id} is no longer writable")
        if not data:
            return
        self.size += len(data)
        if self._file is None and self._held + len(data) <= self._memory_threshold:
            # A caller's bytearray or memoryview may change after the call: keep a copy of it.
            self._pieces.append(data if type(data) is bytes else bytes(data))
            self._held += len(data)
            return
        if self._file is None:
            self._spill()
        assert self._file is not None
        self._file.write(data)

    def open_reader(self) -> BinaryIO:
        """Read back what was written: a view of the memory buffer, or the flushed spill file."""
        if self._file is not None:
            self._file.flush()
        if self._spill_path is not None:
            return open(self._spill_path, "rb")  # noqa: SIM115 - the caller closes it
        return io.BytesIO(self._in_memory())  # shares the bytes, no copy

    def _spill(self) -> None:
        """Move the in-memory part to a fresh spill file; later writes append to it."""
        self._incoming_dir.mkdir(parents=True, exist_ok=True)
        # Unique even when a rewritten copy (the screener's strip) reuses the queue id.
        path = self._incoming_dir / f"{self.queue_id}.{os.getpid()}.{id(self):x}"
        self._file = open(path, "xb", buffering=FILE_BUFFER_SIZE)  # noqa: SIM115 - closed in seal
        self._spill_path = path
        self._file.writelines(self._pieces)
        self._pieces, self._held = [], 0

    def seal(self) -> bytes | Path:
        """End writing: the body is now the returned bytes, or the flushed spill file's path."""
        if self._discarded:
            raise WriterClosedError(f"message {self.queue_id} was discarded")
        self._sealed = True
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._spill_path is not None:
            return self._spill_path
        return self._in_memory()

    def _in_memory(self) -> bytes:
        """The in-memory body as one bytes object: joined on the first call, then kept joined."""
        if len(self._pieces) != 1:
            self._pieces = [b"".join(self._pieces)]
        return self._pieces[0]

    def mark_committed(self) -> None:
        """The store owns the bytes now; a later discard() must not touch anything."""
        self._pieces, self._held = [], 0
        self._spill_path = None
        self._discarded = True

    def discard(self) -> None:
        """Drop the message; the spill file is always removed, even when closing it fails (on a
        full disk the buffered tail cannot be flushed and close() raises ENOSPC)."""
        self._discarded = True
        self._pieces, self._held = [], 0
        try:
            if self._file is not None:
                file, self._file = self._file, None
                file.close()
        except OSError:
            pass  # the bytes are being thrown away anyway
        finally:
            if self._spill_path is not None:
                remove_quietly(self._spill_path)
                self._spill_path = None


def remove_quietly(path: Path) -> None:
    """Delete a spill file that may already be gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def seal_for_commit(writer: MessageWriter, envelope: Envelope, meta: MessageMeta, *, leased: bool) -> bytes | Path:
    """The checks every store's commit makes, then `writer.seal()`: the body to store."""
    if not isinstance(writer, SpoolWriter):
        raise TypeError("commit() takes a writer made by this store's begin()")
    if not envelope.recipients:
        raise ValueError("a message needs at least one recipient")
    if leased and meta.hold_reason:
        raise ValueError("a held message cannot be claimed for delivery")
    return writer.seal()
