"""mailgate with a backlog: the same relay job on an empty spool and on one holding N deferred
messages (as a dead destination leaves them), side by side, and what the backlog costs an admin.

Owns, for `python -m bench.run --backlog N`: filling one spool with N deferred messages
(bench/backlog.py) and reusing it for every run (the messages stay deferred: due hours later),
and the runs: start-up (process start to the 220 greeting, recovery included), end-to-end
throughput of other destinations (smtp-source into the sink), the acceptance latency at 100
msg/s, and `mailgate queue list` against the live server (time to its first message, time to
page through all, the command's peak RSS). Each against the same figure on an empty spool,
interleaved, so the ratio backlog/empty is the figure (the issue's bar: within 20 %).
Must NOT: measure Postfix (Postfix has no such backlog test here), or change the defaults.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import backlog, clients, peers, procstat, report

SPOOLS = ("empty", "backlog")
LIST_TIMEOUT_S = 900.0  # paging a million messages through the control socket: minutes, bounded
MIB = 1024 * 1024
# (key, label, unit, higher is better)
BACKLOG_METRICS = (
    ("start_s", "start-up to the 220 greeting, recovery included", "s", False),
    ("end_to_end_msgs_per_s", "end-to-end throughput, 4 KiB, C=100", "msg/s", True),
    ("accept_msgs_per_s", "accept throughput, 4 KiB, C=100", "msg/s", True),
    ("p50_ms", "acceptance latency p50 @100 msg/s", "ms", False),
    ("p99_ms", "acceptance latency p99 @100 msg/s", "ms", False),
    ("list_first_s", "queue list: first message printed", "s", False),
    ("list_all_s", "queue list: every message printed", "s", False),
    ("list_peak_rss_mib", "queue list: peak RSS of the command", "MiB", False),
)


def prepare(workdir: Path, messages: int, progress: Callable[[str], None], reuse: Path | None) -> Path:
    """The backlog spool, filled once for the whole run (or `reuse`, a spool filled before)."""
    if reuse is not None and (reuse / "queue.db").exists():
        progress(f"backlog: reusing {reuse}")
        return reuse
    spool = reuse or workdir / "backlog-spool"
    seconds = backlog.fill(spool, messages, 4096)
    progress(f"backlog: {messages} deferred messages written in {seconds:.0f} s")
    return spool


def one_run(kind: str, spool: Path | None, workdir: Path, messages: int, latency_count: int,
            free_port: Callable[[], int], settle: Callable[[], None],
            list_all: bool) -> dict[str, Any]:
    """Start mailgate on `spool` (None: an empty one), then throughput, latency, queue list."""
    settle()
    sink = peers.CountingSink(free_port())
    port = free_port()
    started = time.monotonic()
    handle = peers.start_mailgate(workdir, port, sink.port, spool_dir=spool)
    result: dict[str, Any] = {"spool": kind, "start_s": time.monotonic() - started}
    try:
        settle()
        sink.expect(messages)
        cpu_before = procstat.tree_cpu_seconds(handle.pids)
        begun, accepted = clients.run_smtp_source(port, messages, 100, 4096, timeout=max(120.0, messages / 5))
        delivered = sink.wait_for_total(timeout=max(120.0, messages / 5))
        result["accept_msgs_per_s"] = messages / (accepted - begun)
        result["end_to_end_msgs_per_s"] = messages / (delivered - begun) if delivered else None
        result["cpu_s_per_1000_msgs"] = (procstat.tree_cpu_seconds(handle.pids) - cpu_before) / messages * 1000
        latencies = clients.acceptance_latencies(port, 100.0, latency_count, 4096)
        for key, fraction in (("p50_ms", 0.50), ("p99_ms", 0.99)):
            value = report.percentile(latencies.seconds, fraction)
            result[key] = None if value is None else value * 1000
        result["latency_errors"] = len(latencies.errors)
        result.update(queue_list(workdir / "mailgate.toml", list_all))
    finally:
        handle.stop()
        sink.stop()
    return result


def queue_list(config: Path, list_all: bool) -> dict[str, Any]:
    """`mailgate queue list` against the live server: seconds to its first message line, to the
    end (when `list_all`; else it is stopped after the first page), and its peak RSS."""
    command = [sys.executable, "-m", "mailgate", "queue", "list", "--config", str(config)]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               cwd=config.parent)
    assert process.stdout is not None
    first = None
    listed = 0
    deadline = started + LIST_TIMEOUT_S
    for line in process.stdout:
        if line[:1].isalnum() and not line.startswith(b"Queue ID"):
            listed += 1
            if first is None:
                first = time.monotonic() - started
                if not list_all:
                    process.terminate()
                    break
        if time.monotonic() > deadline:
            process.kill()
            break
    process.stdout.close()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    finished = time.monotonic() - started
    return {
        "list_first_s": first,
        "list_all_s": finished if list_all and process.returncode == 0 else None,
        "listed": listed,
        "list_peak_rss_mib": usage.ru_maxrss / 1024,  # ru_maxrss is in KiB on Linux
    }


def run_all(args: Any, workdir: Path, free_port: Callable[[], int], settle: Callable[[], None],
            progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Empty and backlog spools interleaved, `args.reps` times; the empty one first in odd reps."""
    spool = prepare(workdir, args.backlog, progress, args.backlog_spool)
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(1, args.reps + 1):
            for kind in SPOOLS if rep % 2 else tuple(reversed(SPOOLS)):
                path = workdir / f"backlog-{rep}-{kind}"
                path.mkdir()
                try:
                    run = one_run(kind, spool if kind == "backlog" else None, path, args.messages,
                                  args.latency_count, free_port, settle, list_all=rep == 1)
                except (clients.LoadError, peers.PeerError, subprocess.TimeoutExpired, OSError) as error:
                    run = {"spool": kind, "error": f"{type(error).__name__}: {error}", "kept_workdir": str(path)}
                runs.append({"rep": rep, **run})
                if "error" not in run and not args.keep_workdir:
                    shutil.rmtree(path, ignore_errors=True)
                progress(f"rep {rep} backlog={kind}: " + ", ".join(
                    f"{key} {_fmt(run.get(key))}" for key, *_ in BACKLOG_METRICS) + (
                    f" FAILED {run['error']}" if "error" in run else ""))
    finally:
        if not args.keep_workdir and args.backlog_spool is None:
            shutil.rmtree(spool, ignore_errors=True)
    return runs


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for key, label, unit, higher in BACKLOG_METRICS:
        medians = {kind: report.median_of([r for r in runs if r["spool"] == kind], key) for kind in SPOOLS}
        rows.append({"metric": key, "label": label, "unit": unit, "higher_is_better": higher,
                     "medians": medians, "ratio_backlog_to_empty": report.ratio(medians["backlog"], medians["empty"])})
    return rows


def markdown_table(rows: list[dict[str, Any]], backlog_size: int) -> str:
    lines = [f"| with {backlog_size:,} deferred messages queued | empty spool | backlog | backlog/empty |",
             "|---|---:|---:|---:|"]
    for row in rows:
        unit = f" ({row['unit']})" if row["unit"] else ""
        better = "higher" if row["higher_is_better"] else "lower"
        lines.append(f"| {row['label']}{unit}, {better} is better | {report.format_number(row['medians']['empty'])} "
                     f"| {report.format_number(row['medians']['backlog'])} "
                     f"| {report.format_number(row['ratio_backlog_to_empty'])} |")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"
