"""The file source: a map of valid recipients, one `local@domain` or `@domain` catch-all per line.

Owns: parsing the map (blank lines and `#` comments ignored; a second column, as in a Postfix
map, is allowed and ignored), holding it compactly, re-reading it on SIGHUP and when its
modification time or size changes (checked at most once per `check_interval` seconds, re-read in
a thread so the event loop never waits for it), and keeping the old map when a re-read fails.
Must not: write the file or know anything about other sources.

Memory: the map is held as a sorted array of 64-bit BLAKE2b digests of the lower-cased entries,
8 bytes per entry (about 8 MB for a million addresses, against about 120 MB as a Python set of
strings), searched by bisection. Two different addresses share a digest with probability about
n / 2**64 (5e-14 for a million entries); such a collision would accept one unknown address,
which is the behaviour without validation, never a refusal of a valid one. Hand-written because
no maintained library holds a read-only string set this compactly.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from pathlib import Path

from mailgate.recipients.source import Lookup, LookupStatus

log = logging.getLogger("mailgate.recipients")


class MapFileError(Exception):
    """The map file cannot be read; the message names the file, line and problem."""


def _digest(entry: str) -> int:
    return int.from_bytes(hashlib.blake2b(entry.encode("utf-8"), digest_size=8).digest(), "big")


class RecipientMap:
    """An immutable set of lower-cased entries (`local@domain` or `@domain`) as sorted digests."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._digests = array("Q", sorted({_digest(entry.lower()) for entry in entries}))

    def __len__(self) -> int:
        return len(self._digests)

    def __contains__(self, entry: str) -> bool:
        digest = _digest(entry.lower())
        index = bisect_left(self._digests, digest)
        return index < len(self._digests) and self._digests[index] == digest

    def knows(self, address: str) -> bool:
        """The address itself, or its domain's catch-all `@domain`."""
        domain = address.rpartition("@")[2]
        return address in self or f"@{domain}" in self

    @property
    def nbytes(self) -> int:
        return self._digests.itemsize * len(self._digests)


def parse_map(path: Path) -> RecipientMap:
    """Read and check the whole file; MapFileError names the first bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MapFileError(f"{path}: cannot read the recipient map: {exc}") from None
    return RecipientMap(_entries(path, text))


def _entries(path: Path, text: str) -> Iterable[str]:
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip().split(None, 1)
        if not entry:
            continue
        key = entry[0]
        local, at, domain = key.rpartition("@")
        if not at or not domain or "@" in local:
            raise MapFileError(f"{path}:{number}: expected `local@domain` or `@domain`, got {key!r}")
        yield key


class MapFileSource:
    kind = "file"

    def __init__(self, name: str, path: str | Path, check_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.path = Path(path)
        self.check_interval = check_interval
        self.clock = clock
        self._signature = self._stat()
        self.map = parse_map(self.path)  # a bad map at start-up is a configuration error
        self._checked = clock()
        self._reloading: asyncio.Task | None = None

    async def lookup(self, address: str) -> Lookup:
        self._maybe_reload_in_background()
        found = self.map.knows(address)
        return Lookup(LookupStatus.FOUND if found else LookupStatus.NOT_FOUND, self.name)

    def reload(self) -> None:
        """SIGHUP: re-read now; a bad file keeps the old map and says why."""
        signature = self._stat()
        try:
            new_map = parse_map(self.path)
        except MapFileError as exc:
            log.warning("recipient source %s: %s; keeping the previous %d entries", self.name, exc, len(self.map))
            return
        self.map, self._signature = new_map, signature
        log.info("recipient source %s: %d entries loaded from %s", self.name, len(new_map), self.path)

    def close(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            status = os.stat(self.path)
        except OSError:
            return None
        return status.st_mtime_ns, status.st_size, status.st_ino

    def _maybe_reload_in_background(self) -> None:
        now = self.clock()
        if now - self._checked < self.check_interval or self._reloading is not None:
            return
        self._checked = now
        if self._stat() == self._signature:
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload_in_thread())

    async def _reload_in_thread(self) -> None:
        try:
            await asyncio.to_thread(self.reload)
        finally:
            self._reloading = None
