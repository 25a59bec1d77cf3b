"""The start gate: with several workers, the others serve only after worker 0's self-audit.

Owns: `StartGate`, a pipe made before the workers fork. Worker 0 opens it once its listeners
serve and the self-audit has passed; every other worker waits for it before it listens on its
sockets. So each connection of the audit reaches worker 0, whose logs know them as the
audit's (with SO_REUSEPORT the kernel only hands connections to sockets that listen), and no
worker says "ready" before the audit has run. If worker 0 fails to start, the supervisor stops the others.
Must not: fork or signal (supervisor.py does), or build components (app.py does).
"""

from __future__ import annotations

import asyncio
import os


class StartGate:
    def __init__(self, waiters: int) -> None:
        self._waiters = waiters
        self._read, self._write = os.pipe()

    def open(self) -> None:
        """Worker 0: one byte per waiting worker (a pipe holds far more than there are cores)."""
        os.write(self._write, b"\x01" * self._waiters)

    async def wait(self) -> None:
        """Another worker: until worker 0 opened the gate."""
        await asyncio.to_thread(os.read, self._read, 1)
