"""Bodies a store committed, kept in memory until their delivery reads them (both queue stores).

Owns: `HotBodies`, a bounded cache (oldest out first) of small message bodies by queue id.
Must not: be the only copy of anything: every body in it is already committed to the store.
"""

from __future__ import annotations

from collections import OrderedDict

HOT_BODY_BYTES = 64 * 1024 * 1024  # bodies kept in memory between commit and delivery


class HotBodies:
    """Bodies this process committed, kept (bounded, oldest out first) until delivered.

    The runner usually delivers a message moments after its commit; reading it back from SQLite
    through a reader thread would cost a round trip for bytes we still hold.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._bytes = 0
        self._bodies: OrderedDict[str, bytes] = OrderedDict()

    def put(self, queue_id: str, body: bytes) -> None:
        if len(body) > self._limit // 16:
            return
        self._bodies[queue_id] = body
        self._bytes += len(body)
        while self._bytes > self._limit:
            _, oldest = self._bodies.popitem(last=False)
            self._bytes -= len(oldest)

    def get(self, queue_id: str) -> bytes | None:
        return self._bodies.get(queue_id)

    def pop(self, queue_id: str) -> None:
        body = self._bodies.pop(queue_id, None)
        if body is not None:
            self._bytes -= len(body)
