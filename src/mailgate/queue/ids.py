"""Queue ids: short, unique, roughly sortable by creation time.

Owns: the format of a queue id, the text that appears in `250 OK queued as <id>`, in the
Received header and in every log line about the message.
Must not: touch storage; uniqueness is finally guarded by the store's primary key.

Format: 9 characters of milliseconds since the epoch followed by 6 characters of 30 bits, both in
Crockford's base32 alphabet (digits then upper-case letters without I, L, O, U). That alphabet is in
ASCII order, so ids sort by their creation millisecond. The 30 bits are a 10-bit tag drawn at random
for each process (again in each forked worker) and a 20-bit counter that starts at random: one
process never makes the same id twice (it would take 2^20 ids in one millisecond), and two workers
collide only when their tags and counters meet in the same millisecond. Purely random bits made two
of 5,000 ids in one millisecond collide about once in 90 tries. Written here because it is a few
lines and a ULID library would give a 26-character id that is tedious in logs.
"""

from __future__ import annotations

import os
import random

CROCKFORD_BASE32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TIME_CHARACTERS = 9  # 45 bits of milliseconds: until the year 3084
UNIQUE_CHARACTERS = 6  # 30 bits: the process tag and the counter
QUEUE_ID_LENGTH = TIME_CHARACTERS + UNIQUE_CHARACTERS
COUNTER_BITS = 20
_COUNTER_MASK = (1 << COUNTER_BITS) - 1


class _Sequence:
    """This process's tag and counter. Not secrets: ids need uniqueness, not unpredictability."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        draw = random.SystemRandom()
        self.tag = draw.getrandbits(5 * UNIQUE_CHARACTERS - COUNTER_BITS) << COUNTER_BITS
        self.counter = draw.getrandbits(COUNTER_BITS)

    def next(self) -> int:
        self.counter = (self.counter + 1) & _COUNTER_MASK
        return self.tag | self.counter


_sequence = _Sequence()
# Forked workers must not share the parent's tag and counter (they would make the same ids).
os.register_at_fork(after_in_child=_sequence.restart)


def _encode(value: int, width: int) -> str:
    characters = []
    for _ in range(width):
        characters.append(CROCKFORD_BASE32[value & 31])
        value >>= 5
    return "".join(reversed(characters))


def new_queue_id(now: float) -> str:
    """A fresh queue id for a message started at `now` (seconds since the epoch)."""
    milliseconds = int(now * 1000) & ((1 << (5 * TIME_CHARACTERS)) - 1)
    return _encode(milliseconds, TIME_CHARACTERS) + _encode(_sequence.next(), UNIQUE_CHARACTERS)


def is_queue_id(text: str) -> bool:
    """True if `text` has the shape of a queue id (for CLI arguments and log searches)."""
    return len(text) == QUEUE_ID_LENGTH and all(char in CROCKFORD_BASE32 for char in text)
