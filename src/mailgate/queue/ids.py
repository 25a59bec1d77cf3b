"""Queue ids: short, unique, roughly sortable by creation time.

Owns: the format of a queue id, the text that appears in `250 OK queued as <id>`, in the
Received header and in every log line about the message.
Must not: touch storage; uniqueness is finally guarded by the store's primary key.

Format: 9 characters of milliseconds since the epoch followed by 6 random characters, both in
Crockford's base32 alphabet (digits then upper-case letters without I, L, O, U). That alphabet is in
ASCII order, so ids sort by their creation millisecond; 30 random bits make two ids made in the
same millisecond collide with negligible probability. Written here because it is ten lines and a
ULID library would give a 26-character id that is tedious in logs.
"""

from __future__ import annotations

import os
import random

# Not secrets: ids need uniqueness, not unpredictability, and os.urandom per id costs a syscall.
_random = random.Random()
# Forked workers must not share the parent's sequence (they would make the same ids).
os.register_at_fork(after_in_child=_random.seed)

CROCKFORD_BASE32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
TIME_CHARACTERS = 9  # 45 bits of milliseconds: until the year 3084
RANDOM_CHARACTERS = 6  # 30 random bits
QUEUE_ID_LENGTH = TIME_CHARACTERS + RANDOM_CHARACTERS


def _encode(value: int, width: int) -> str:
    characters = []
    for _ in range(width):
        characters.append(CROCKFORD_BASE32[value & 31])
        value >>= 5
    return "".join(reversed(characters))


def new_queue_id(now: float) -> str:
    """A fresh queue id for a message started at `now` (seconds since the epoch)."""
    milliseconds = int(now * 1000) & ((1 << (5 * TIME_CHARACTERS)) - 1)
    return _encode(milliseconds, TIME_CHARACTERS) + _encode(
        _random.getrandbits(5 * RANDOM_CHARACTERS), RANDOM_CHARACTERS
    )


def is_queue_id(text: str) -> bool:
    """True if `text` has the shape of a queue id (for CLI arguments and log searches)."""
    return len(text) == QUEUE_ID_LENGTH and all(char in CROCKFORD_BASE32 for char in text)
