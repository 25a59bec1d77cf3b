"""Draining: how a stopping listener tells its sessions to end, and when.

Owns: `Drain`, shared by one listener and its sessions. A session marks itself quiet while it
waits for a command between transactions; `stop()` cuts the quiet ones at once and tells every
other session to end at its next quiet moment, so a transaction in progress can still finish
(its 250) within the listener's grace time. Each session then says 421 4.3.2 (RFC 5321 §3.8,
RFC 3463 §3.5 "system not accepting network messages") and closes.
Must not: speak SMTP (session.py says the 421) or decide the grace time (listener.py, app.py).
"""

from __future__ import annotations

import asyncio


class Drain:
    def __init__(self) -> None:
        self.stopping = False
        self._quiet: set[asyncio.Task] = set()

    def quiet(self, task: asyncio.Task) -> None:
        """`task` now waits for a command between transactions: it may be cut at any moment."""
        self._quiet.add(task)

    def busy(self, task: asyncio.Task) -> None:
        self._quiet.discard(task)

    def stop(self) -> None:
        """No new transactions: cancel every quiet session now (each ends with 421 4.3.2)."""
        self.stopping = True
        for task in list(self._quiet):
            task.cancel()
