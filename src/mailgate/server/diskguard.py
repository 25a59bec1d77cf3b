"""Disk back-pressure: watch free space and free inodes of the spool's file system (SPEC §4).

Owns: `DiskGuard`, which samples `os.statvfs` of the spool directory every `interval` seconds,
classifies the sample as `ok`, `soft` or `hard` against the configured thresholds, and calls its
subscribers when the state changes. The server's reaction, wired by the composition root:
- `soft` (free space or inodes below the soft threshold): new mail gets 452 4.3.1
  (`core.reply.INSUFFICIENT_STORAGE`; RFC 5321 §4.2.3 "insufficient system storage", RFC 3463
  §3.4 X.3.1 "mail system full"), as Exchange's back pressure does; the queue keeps delivering,
  which frees space;
- `hard` (below the hard threshold): the listeners stop accepting connections;
- while a message streams in, the session asks `room_now()` (a fresh sample) about once per MiB
  and refuses the message with 452 4.3.1 below the soft threshold;
- back to `ok` by itself when space returns. A state is only left once free space is back above
  its threshold plus `recovery_margin` (hysteresis), so a spool hovering at a threshold does not
  make the listeners flap.
Must not: delete, move or write anything (nothing already queued is ever touched), send replies,
or know about listeners; it only observes and reports.

Thresholds of 0 are off. File systems that report no inode counts (btrfs, some FUSE) skip the
inode check. statvfs is called on the event loop: it is a microsecond system call on a local file
system, and the spool must be local anyway (SQLite WAL needs it).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

log = logging.getLogger("mailgate.diskguard")


class DiskState(IntEnum):
    """Ordered: a larger value is worse."""

    OK = 0
    SOFT = 1
    HARD = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class DiskSample:
    free_bytes: int  # available to unprivileged users (f_bavail), which mailgate runs as
    free_inodes: int | None  # None when the file system does not count inodes


@dataclass(frozen=True, slots=True)
class DiskThresholds:
    soft_free_bytes: int
    hard_free_bytes: int
    soft_free_inodes: int
    hard_free_inodes: int
    recovery_margin: float = 0.1  # leave a state only above threshold x (1 + margin)

    def __post_init__(self) -> None:
        if min(self.soft_free_bytes, self.hard_free_bytes, self.soft_free_inodes, self.hard_free_inodes) < 0:
            raise ValueError("disk thresholds must not be negative")
        if self.hard_free_bytes > self.soft_free_bytes or self.hard_free_inodes > self.soft_free_inodes:
            raise ValueError("a hard disk threshold must not be above its soft threshold")
        if self.recovery_margin < 0:
            raise ValueError("recovery_margin must not be negative")


ChangeCallback = Callable[[DiskState, DiskState, DiskSample], Awaitable[None] | None]


def sample_of(result: os.statvfs_result) -> DiskSample:
    inodes = result.f_favail if result.f_files > 0 else None
    return DiskSample(result.f_bavail * result.f_frsize, inodes)


def classify(sample: DiskSample, thresholds: DiskThresholds, previous: DiskState) -> DiskState:
    """The new state: worse as soon as a threshold is crossed, better only past the margin."""
    entering = _level(sample, thresholds, 1.0)
    recovered = _level(sample, thresholds, 1.0 + thresholds.recovery_margin)
    return max(entering, min(previous, recovered))


def _level(sample: DiskSample, thresholds: DiskThresholds, factor: float) -> DiskState:
    def below(free: int | None, threshold: int) -> bool:
        return free is not None and threshold > 0 and free < threshold * factor

    if below(sample.free_bytes, thresholds.hard_free_bytes) or below(sample.free_inodes, thresholds.hard_free_inodes):
        return DiskState.HARD
    if below(sample.free_bytes, thresholds.soft_free_bytes) or below(sample.free_inodes, thresholds.soft_free_inodes):
        return DiskState.SOFT
    return DiskState.OK


class DiskGuard:
    def __init__(
        self,
        path: str | Path,
        soft_free_bytes: int,
        hard_free_bytes: int,
        soft_free_inodes: int,
        hard_free_inodes: int,
        interval: float,
        *,
        recovery_margin: float = 0.1,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.path = str(path)
        self.thresholds = DiskThresholds(
            soft_free_bytes, hard_free_bytes, soft_free_inodes, hard_free_inodes, recovery_margin
        )
        self.interval = interval
        self.state = DiskState.OK
        self.last_sample: DiskSample | None = None
        self._statvfs = statvfs
        self._subscribers: list[ChangeCallback] = []
        self._stopping = asyncio.Event()

    def subscribe(self, callback: ChangeCallback) -> None:
        """`callback(old, new, sample)` on every change of state; may be a coroutine function."""
        self._subscribers.append(callback)

    @property
    def accepting_mail(self) -> bool:
        return self.state is DiskState.OK

    def room_for(self, size: int) -> bool:
        """May a message of `size` bytes (SIZE= at MAIL, RFC 1870 §6.1) be accepted now?"""
        if not self.accepting_mail:
            return False
        if self.last_sample is None or self.thresholds.hard_free_bytes == 0:
            return True
        return self.last_sample.free_bytes - size >= self.thresholds.hard_free_bytes

    def room_now(self) -> bool:
        """A fresh sample, for a message streaming in (checked about once per MiB, so a long
        DATA cannot run past the soft threshold between two polls): False below it. It does not
        change `state` (poll() does, with its subscribers); a failing statvfs answers True and
        leaves the refusal to the write error it foretells."""
        try:
            sample = sample_of(self._statvfs(self.path))
        except OSError:
            return True
        self.last_sample = sample
        return _level(sample, self.thresholds, 1.0) is DiskState.OK

    async def poll(self) -> DiskState:
        """Sample once, update `state`, and await the subscribers if it changed.

        A failing statvfs (spool directory gone, I/O error) keeps the last state and is logged:
        guessing "ok" could accept mail we cannot store, guessing "hard" could shut out mail over
        a transient error; the store's own errors already answer 451 in that case.
        """
        try:
            sample = sample_of(self._statvfs(self.path))
        except OSError as exc:
            log.warning("cannot read free space of %s: %s", self.path, exc)
            return self.state
        self.last_sample = sample
        new = classify(sample, self.thresholds, self.state)
        if new is not self.state:
            old, self.state = self.state, new
            log.log(
                logging.INFO if new is DiskState.OK else logging.WARNING,
                "spool disk %s -> %s: %d bytes and %s inodes free at %s",
                old.label, new.label, sample.free_bytes,
                "uncounted" if sample.free_inodes is None else sample.free_inodes, self.path,
            )
            await self._notify(old, new, sample)
        return self.state

    async def run(self) -> None:
        """Poll every `interval` seconds until `stop()`."""
        self._stopping.clear()
        while not self._stopping.is_set():
            await self.poll()
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stopping.set()

    async def _notify(self, old: DiskState, new: DiskState, sample: DiskSample) -> None:
        for callback in list(self._subscribers):
            try:
                result = callback(old, new, sample)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a subscriber's bug must not stop the guard: it keeps watching
                log.exception("disk state subscriber %r failed", callback)
