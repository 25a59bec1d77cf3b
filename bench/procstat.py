"""What a server's processes cost: CPU seconds and peak resident memory of a whole process tree.

Owns: reading /proc (Linux only) for a tree rooted at given PIDs, sampling its memory in a
thread (summed RSS every 100 ms, summed PSS every second), and the raw fsync rate of a disk.
Must NOT: start or stop anything; it only observes.

Hand-written: psutil would do the /proc reading, but it is not a dependency and the few fields we
need (stat, statm) are simple.  CPU of children that already exited is counted through their
reaper's cutime/cstime, so Postfix daemons that come and go are included as long as the master
(the tree's root) reaps them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_INTERVAL_S = 0.1
PSS_EVERY_N_SAMPLES = 10


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    """Direct children of every thread of `pid` (proc(5): /proc/PID/task/TID/children)."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children", encoding="ascii") as handle:
                found.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return found


def tree_pids(roots: Iterable[int]) -> set[int]:
    """The live roots and all their live descendants."""
    found: set[int] = set()
    pending = [pid for pid in roots if _stat_fields(pid) is not None]
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending.extend(_children(pid))
    return found


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """utime+stime of every live process in the tree plus cutime+cstime of what they reaped."""
    ticks = 0
    for pid in tree_pids(roots):
        fields = _stat_fields(pid)
        if fields is not None:
            # stat(5): utime, stime, cutime, cstime are fields 14-17 (indexes 11-14 here).
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS


def tree_rss_bytes(roots: Iterable[int]) -> int:
    """Summed resident set size: cheap, but counts every shared page once per process."""
    total = 0
    for pid in tree_pids(roots):
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
                total += int(handle.read().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


def tree_pss_bytes(roots: Iterable[int]) -> int:
    """Summed proportional set size: each shared page split among its sharers, so a tree of
    100 processes sharing one binary is not charged for it 100 times.  Costs ~0.4 ms/process."""
    total = 0
    for pid in tree_pids(roots):
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, IndexError, ValueError):
            continue
    return total


@dataclass(frozen=True)
class MemoryPeaks:
    rss_sum_bytes: int
    pss_bytes: int


class PeakMemorySampler:
    """Between start() and stop(): the tree's summed RSS every 100 ms and its summed PSS every
    second (PSS is dearer to read, and the sampler must not eat the CPU it is measuring)."""

    def __init__(self, roots: Callable[[], Iterable[int]]) -> None:
        self._roots = roots
        self._rss_peak = 0
        self._pss_peak = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def start(self) -> PeakMemorySampler:
        self._thread.start()
        return self

    def stop(self) -> MemoryPeaks:
        self._stopping.set()
        self._thread.join()
        return MemoryPeaks(self._rss_peak, self._pss_peak)

    def _run(self) -> None:
        tick = 0
        while True:
            roots = list(self._roots())
            self._rss_peak = max(self._rss_peak, tree_rss_bytes(roots))
            if tick % PSS_EVERY_N_SAMPLES == 0:
                self._pss_peak = max(self._pss_peak, tree_pss_bytes(roots))
            tick += 1
            if self._stopping.wait(SAMPLE_INTERVAL_S):
                return


def fsync_rates(directory: Path, seconds: float = 2.0) -> dict[str, float]:
    """Raw durable-write rates of the disk under `directory`, in operations per second.

    append_fsync: 4 KiB appended to one file, then fsync (a journal's pattern).
    create_fsync: a new 4 KiB file written, fsynced, and its directory fsynced (a queue's
    pattern: the message file and its name both durable).
    """
    block = b"x" * 4096
    probe_dir = directory / "fsync-probe"
    probe_dir.mkdir(parents=True, exist_ok=True)
    rates: dict[str, float] = {}
    journal = os.open(probe_dir / "journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        def append(_: int) -> None:
            os.write(journal, block)
            os.fsync(journal)

        rates["append_fsync_per_s"] = _rate(seconds, append)
    finally:
        os.close(journal)
    directory_fd = os.open(probe_dir, os.O_RDONLY)
    try:
        def create(index: int) -> None:
            handle = os.open(probe_dir / f"m{index}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(handle, block)
            os.fsync(handle)
            os.close(handle)
            os.fsync(directory_fd)

        rates["create_fsync_per_s"] = _rate(seconds, create)
    finally:
        os.close(directory_fd)
    for path in probe_dir.iterdir():
        path.unlink()
    probe_dir.rmdir()
    return rates


def _rate(seconds: float, operation: Callable[[int], object]) -> float:
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        operation(count)
        count += 1
    return count / (time.perf_counter() - started)
