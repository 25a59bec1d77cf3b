"""Date and time texts of an epoch time, formatted once per second instead of once per record.

Owns: the texts the logs stamp their records with (the JSON log's RFC 3339 `@timestamp`, the
W3C log's `date` and `time` fields, the UTC day that names a daily file), and the RFC 5322 local
date of the Received: and Date: fields we add to messages, each exactly what
`datetime.fromtimestamp(when, timezone.utc)` with `strftime` (or `email.utils.formatdate`)
gives, including the rounding to the nearest microsecond (half to even), which can carry into the next second. A
busy relay logs hundreds of records per second, all in the same few seconds: their texts come
from a small cache keyed by the second (safe from any thread: a lost race only formats twice).
Must not: know record shapes or files (jsonlog.py, w3c.py, writer.py).
"""

from __future__ import annotations

import email.utils
import math
from datetime import date, datetime, timezone
from typing import NamedTuple

CACHED_SECONDS = 64  # the cache is emptied when it holds more (records are stamped "now")


class SecondTexts(NamedTuple):
    iso_prefix: str  # 2026-12-05T22:15:33.  (milliseconds and Z follow)
    w3c_date: str  # 2026-12-05
    w3c_time: str  # 22:15:33
    day: date
    rfc5322_local: str  # Sat, 05 Dec 2026 23:15:33 +0100 (the local time zone)


_cache: dict[int, SecondTexts] = {}


def split(when: float) -> tuple[int, int]:
    """(whole second, microsecond) as `datetime.fromtimestamp` rounds them (CPython's
    _PyTime_DoubleToDenominator: the fraction in microseconds rounded half to even, a carry of a
    whole million going into the second)."""
    fraction, whole = math.modf(when)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        micro -= 1_000_000
        whole += 1.0
    elif micro < 0:
        micro += 1_000_000
        whole -= 1.0
    return int(whole), micro


def second_texts(second: int) -> SecondTexts:
    texts = _cache.get(second)
    if texts is None:
        moment = datetime.fromtimestamp(second, timezone.utc)
        texts = SecondTexts(
            moment.strftime("%Y-%m-%dT%H:%M:%S."), moment.strftime("%Y-%m-%d"),
            moment.strftime("%H:%M:%S"), moment.date(), email.utils.format_datetime(moment.astimezone()),
        )
        if len(_cache) >= CACHED_SECONDS:
            _cache.clear()
        _cache[second] = texts
    return texts


def rfc3339_millis(when: float) -> str:
    """`2026-12-05T22:15:33.123Z`: UTC, milliseconds (truncated), Z."""
    second, micro = split(when)
    return f"{second_texts(second).iso_prefix}{micro // 1000:03d}Z"


def rfc5322_local(when: float) -> str:
    """`email.utils.formatdate(when, localtime=True)`: RFC 5322 §3.3, seconds, local zone."""
    return texts(when).rfc5322_local


def texts(when: float) -> SecondTexts:
    return second_texts(split(when)[0])
