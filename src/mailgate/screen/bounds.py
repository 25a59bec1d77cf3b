"""What the screener could not see: the blind spots a bounded walk leaves, and its deadline.

Owns: the kinds of content a limit can hide (`PARTS`, `TEXT`, `ZIP_NAMES`, `ZIP_KINDS`,
`HEADERS`), `Unseen` (one place the walk could not fully inspect, with the reason), and `Deadline`, the one wall-clock limit over the whole
screening of a message, checked by the walk as it reads and handed to every regular expression
search as its time-out (the `regex` module stops a catastrophic backtrack at that time).
Must not: decide what an unseen part means for the message (screener.py does: a rule that could
have matched there decides as if it had, SPEC §3 fail closed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

PARTS = "MIME parts"  # containers not opened: their leaves are unknown
TEXT = "text"  # decoded text past what body rules are given
ZIP_NAMES = "names in zip"  # a zip not (fully) listed
ZIP_KINDS = "contents in zip"  # zip entries not sniffed (encrypted, or not listed)
HEADERS = "headers"  # a header section past its size limit
EVERYTHING = frozenset({PARTS, TEXT, ZIP_NAMES, ZIP_KINDS, HEADERS})


class ScreenTimeout(Exception):
    """The screening of this message ran past its wall-clock limit."""


@dataclass(frozen=True, slots=True)
class Unseen:
    """`what` of the entity at `path` ("" is the root) was not inspected, because of `reason`."""

    path: str
    what: frozenset[str]
    reason: str


class Deadline:
    """One absolute point in monotonic time; `remaining()` is what a regex search may spend."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def check(self) -> None:
        if self.remaining() <= 0:
            raise ScreenTimeout("the screening time limit was reached")


def regex_budget(deadline: Deadline | None) -> float | None:
    """The `timeout=` of one regex search: what is left of the deadline (at least a millisecond,
    so a search started at the limit stops at once), or None without a deadline."""
    return None if deadline is None else max(deadline.remaining(), 0.001)
