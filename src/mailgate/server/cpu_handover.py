"""Giving the CPU to a client on this host right after the reply it waits for.

Owns: `CpuHandover`, which one worker's sessions call after writing the reply to an end of data.
Linux wakes the reader of a socket on the writer's CPU when that CPU runs nothing else (a "sync"
wake-up: the writer is expected to block next). A session does not block after that reply: it
writes the message's records and hands the message to delivery, 0.2-0.3 ms of CPU, and a client
on the same host (a content filter, a local submitter, a load generator) waits that long for a
250 already written. `os.sched_yield()` lets it read the reply first.
Only when the worker is lightly loaded (its previous end of data is more than `QUIET_SECONDS`
ago): under load other sessions are ready and the client is served anyway, and a yield per
message would hand the CPU to other processes at every message for nothing.
Must not: block, or yield anywhere else than after a reply.
"""

from __future__ import annotations

import os
import time

# A worker taking 100 messages a second sees an end of data every 10 ms; under load, several
# per millisecond.
QUIET_SECONDS = 0.002


class CpuHandover:
    def __init__(self) -> None:
        self._last_end = float("-inf")  # time.monotonic() of this worker's previous end of data

    def after_end_of_data_reply(self) -> None:
        now = time.monotonic()
        if now - self._last_end >= QUIET_SECONDS:
            os.sched_yield()
        self._last_end = now
