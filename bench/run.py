"""One command that benchmarks mailgate and Postfix doing the same relay job, side by side.

    sudo .venv/bin/python -m bench.run            # full run (docs/performance.md)
    sudo .venv/bin/python -m bench.run --quick    # smoke test: N=500, one repetition

Owns: the command line, the order of runs (repetitions interleaved: mailgate, Postfix, mailgate,
Postfix, ...), each run's measurement procedure, and writing the JSON and the table.
Must NOT: implement load, peers or /proc reading itself (clients, peers, procstat do).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import clients, peers, procstat, report

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "latest.json"
DEFAULT_WORKDIR = REPO / "bench" / "results" / "work"
LATENCY_RATE = 100.0  # messages per second, the steady rate
FD_HEADROOM = 1024
MIB = 1024 * 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: N=500, one repetition, 200 latency probes, 1000 conns")
    parser.add_argument("--messages", "-n", type=int, help="N messages per run (default 5000)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3)")
    parser.add_argument("--sizes", type=_int_list, default=[4096, 102400],
                        help="message sizes in bytes, comma-separated (default 4096,102400)")
    parser.add_argument("--sessions", type=_int_list, default=[20, 100],
                        help="parallel smtp-source sessions C, comma-separated (default 20,100)")
    parser.add_argument("--only", choices=sorted(peers.SERVERS), action="append",
                        help="run only this server (repeatable); default both")
    parser.add_argument("--latency-count", type=int, help="probes per latency run (default 1000)")
    parser.add_argument("--connections", type=int, help="idle connections (default 5000)")
    parser.add_argument("--connection-deadline", type=float, default=30.0,
                        help="seconds to wait for every greeting (default 30)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="spools and queues live here: the disk being measured")
    parser.add_argument("--keep-workdir", action="store_true", help="keep spools and logs")
    args = parser.parse_args(argv)
    quick = args.quick
    args.messages = args.messages or (500 if quick else 5000)
    args.reps = args.reps or (1 if quick else 3)
    args.latency_count = args.latency_count or (200 if quick else 1000)
    args.connections = args.connections or (1000 if quick else 5000)
    args.servers = args.only or ["mailgate", "postfix"]
    return args


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_open_file_limit(wanted: int) -> int:
    """Raises RLIMIT_NOFILE for us and the servers we start (they inherit it); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass  # a container may cap the hard limit; fall back to it below
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    return max(soft, target)


def throughput_run(server: str, size: int, sessions: int, messages: int,
                   workdir: Path) -> dict[str, Any]:
    """smtp-source pushes N messages through the server into the sink; times, CPU, memory."""
    sink = peers.CountingSink(free_port())
    try:
        handle = peers.SERVERS[server](workdir, free_port(), sink.port)
        listen_port = _listen_port(workdir, handle)
        try:
            sink.expect(messages)
            cpu_before = procstat.tree_cpu_seconds(handle.pids)
            sampler = procstat.PeakMemorySampler(lambda: handle.pids).start()
            try:
                started, accepted = clients.run_smtp_source(
                    listen_port, messages, sessions, size, timeout=max(120.0, messages / 5))
                delivered = sink.wait_for_total(timeout=max(120.0, messages / 5))
            finally:
                peak_rss = sampler.stop()
            cpu = procstat.tree_cpu_seconds(handle.pids) - cpu_before
        finally:
            handle.stop()
    finally:
        sink.stop()
    return {
        "server": server, "size": size, "sessions": sessions, "messages": messages,
        "accept_msgs_per_s": messages / (accepted - started),
        "end_to_end_msgs_per_s": messages / (delivered - started) if delivered else None,
        "sink_count": sink.count,
        "peak_rss_mib": peak_rss / MIB,
        "cpu_s_per_1000_msgs": cpu / messages * 1000,
    }


def baseline_run(size: int, sessions: int, messages: int) -> dict[str, Any]:
    """smtp-source straight into smtp-sink: the ceiling the load tools themselves allow."""
    sink = peers.CountingSink(free_port())
    try:
        started, finished = clients.run_smtp_source(
            sink.port, messages, sessions, size, timeout=max(120.0, messages / 5))
    finally:
        sink.stop()
    return {"size": size, "sessions": sessions, "messages": messages,
            "accept_msgs_per_s": messages / (finished - started)}


def latency_run(server: str, size: int, count: int, workdir: Path) -> dict[str, Any]:
    """Our client at a steady 100 msg/s: end-of-data to 250, per message."""
    sink = peers.CountingSink(free_port())
    try:
        handle = peers.SERVERS[server](workdir, free_port(), sink.port)
        try:
            result = clients.acceptance_latencies(
                _listen_port(workdir, handle), LATENCY_RATE, count, size)
        finally:
            handle.stop()
    finally:
        sink.stop()
    p50 = report.percentile(result.seconds, 0.50)
    p99 = report.percentile(result.seconds, 0.99)
    return {
        "server": server, "size": size, "sent": count, "accepted": len(result.seconds),
        "errors": result.errors[:5], "error_count": len(result.errors),
        "p50_ms": p50 * 1000 if p50 is not None else None,
        "p99_ms": p99 * 1000 if p99 is not None else None,
    }


def connection_run(server: str, count: int, deadline: float, workdir: Path) -> dict[str, Any]:
    """`count` idle connections at once: how many get their 220 greeting, how fast, what RAM."""
    sink = peers.CountingSink(free_port())
    try:
        handle = peers.SERVERS[server](workdir, free_port(), sink.port)
        try:
            rss_idle = procstat.tree_rss_bytes(handle.pids)
            result = clients.idle_connections(
                _listen_port(workdir, handle), count, deadline,
                measure_while_held=lambda: procstat.tree_rss_bytes(handle.pids))
        finally:
            handle.stop()
    finally:
        sink.stop()
    added = result.held_measurement - rss_idle
    return {
        "server": server, "requested": count, "greeted": result.greeted,
        "seconds_to_greet_all": result.seconds_to_greet_all,
        "idle_rss_mib": rss_idle / MIB, "held_rss_mib": result.held_measurement / MIB,
        "kib_per_greeted_connection": added / 1024 / result.greeted if result.greeted else None,
    }


_LISTEN_PORTS: dict[int, int] = {}


def _listen_port(workdir: Path, handle: peers.ServerHandle) -> int:
    return _LISTEN_PORTS[id(handle)]


def machine_description(workdir: Path) -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    postfix_version = subprocess.run(["/usr/sbin/postconf", "-d", "-h", "mail_version"],
                                     capture_output=True, text=True, check=False).stdout.strip()
    try:
        mailgate_version = metadata.version("mailgate")
    except metadata.PackageNotFoundError:
        mailgate_version = None
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
        "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB,
        "python": platform.python_version(), "postfix": postfix_version,
        "mailgate": mailgate_version, "workdir": str(workdir),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
