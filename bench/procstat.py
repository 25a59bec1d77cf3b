"""What a server's processes cost: CPU seconds and peak resident memory of a whole process tree.

Owns: reading /proc (Linux only) for a tree rooted at given PIDs, sampling its summed RSS every
100 ms in a thread, and the raw fsync rate of a directory's disk.
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
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_INTERVAL_S = 0.1


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree_pids(roots: Iterable[int]) -> set[int]:
    """The live roots and all their live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    pending = [pid for pid in roots if _stat_fields(pid) is not None]
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending.extend(children.get(pid, ()))
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
    """Summed resident set size of the tree (shared pages are counted once per process)."""
    total = 0
    for pid in tree_pids(roots):
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
                total += int(handle.read().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


class PeakMemorySampler:
    """Samples the tree's summed RSS every 100 ms between start() and stop(); keeps the peak."""

    def __init__(self, roots: Callable[[], Iterable[int]]) -> None:
        self._roots = roots
        self._peak = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> PeakMemorySampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stops sampling; the peak summed RSS in bytes."""
        self._stopping.set()
        self._thread.join()
        return self._peak

    def current_peak(self) -> int:
        return self._peak

    def _run(self) -> None:
        while True:
            self._peak = max(self._peak, tree_rss_bytes(self._roots()))
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
