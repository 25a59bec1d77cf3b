"""One command that benchmarks mailgate and Postfix doing the same relay job, side by side.

    sudo .venv/bin/python -m bench.run            # full run (docs/performance.md)
    sudo .venv/bin/python -m bench.run --quick    # smoke test: N=500, one repetition
    sudo .venv/bin/python -m bench.run --cluster  # SQLite, 1 and 2 nodes on PostgreSQL, Postfix

Owns: the command line, the order of runs (repetitions interleaved: mailgate, Postfix, mailgate,
Postfix, ...), each run's measurement procedure, and writing the JSON and the table.
Must NOT: implement load, peers or /proc reading itself (clients, peers, procstat do).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import backlog_runs, clients, opendkim_milter, peers, procstat, report
from tests.support import postfix

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "latest.json"
DEFAULT_WORKDIR = REPO / "bench" / "results" / "work"
SETTLE_SECONDS = 2.0  # after os.sync(), before each measured run
LATENCY_RATE = 100.0  # messages per second, the steady rate
FD_HEADROOM = 1024
MIB = 1024 * 1024
SCENARIOS = ("relay", "connections", "backlog")
# --cluster: the setups of docs/cluster.md, measured in one run with the same load and sink.
CLUSTER_SERVERS = ["mailgate", "mailgate-pg", "mailgate-pg-2nodes", "postfix"]
# `--dkim`: mailgate signing, Postfix as it is, and Postfix signing the same way through OpenDKIM.
DKIM_SERVERS = ["mailgate", "postfix-dkim", "postfix"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: N=500, one repetition, 200 latency probes, 1000 conns")
    parser.add_argument("--messages", "-n", type=int, help="N messages per run (default 5000)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3)")
    parser.add_argument("--sizes", type=_int_list,
                        help="message sizes in bytes, comma-separated (default 4096,102400; --cluster 4096)")
    parser.add_argument("--sessions", type=_int_list,
                        help="parallel smtp-source sessions C, comma-separated (default 20,100; --cluster 100)")
    parser.add_argument("--only", choices=sorted(peers.SERVERS), action="append",
                        help="run only this server (repeatable); default mailgate and postfix "
                             "(--dkim: also postfix-dkim)")
    parser.add_argument("--cluster", action="store_true",
                        help="the cluster figures: mailgate on SQLite, one node on PostgreSQL, two "
                             "nodes on one PostgreSQL (private, fsync and synchronous_commit on) and "
                             "Postfix side by side, relay scenario only; prints a table of the setups")
    parser.add_argument("--latency-count", type=int, help="probes per latency run (default 1000)")
    parser.add_argument("--connections", type=int, help="idle connections (default 5000)")
    parser.add_argument("--connection-deadline", type=float, default=15.0,
                        help="seconds to wait for every greeting (default 15)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="spools and queues live here: the disk being measured")
    parser.add_argument("--keep-workdir", action="store_true", help="keep spools and logs")
    parser.add_argument("--dkim", action="store_true",
                        help="mailgate DKIM-signs every message (RSA + Ed25519); the load is then trusted. "
                             "Postfix runs as it is and, as postfix-dkim, signing the same way "
                             "through two OpenDKIM milters (apt-get install opendkim)")
    parser.add_argument("--recipients", choices=("none", "file", "ldap", "ldap-cold"), default="none",
                        help="mailgate validates recipients at RCPT: a million-entry map file, LDAP with "
                             "its cache (warm), or LDAP asked for every RCPT (cold)")
    parser.add_argument("--scenario", choices=SCENARIOS, action="append",
                        help="run only this part (repeatable): relay (throughput and latency, "
                             "with the disk and sink references), connections (idle connections), "
                             "backlog (mailgate with a million deferred messages); default all")
    parser.add_argument("--backlog", type=int,
                        help="also run mailgate on a spool holding this many deferred messages against "
                             "an empty one (default 1000000; --quick 100000; 0 skips it)")
    parser.add_argument("--backlog-spool", type=Path, metavar="DIR",
                        help="keep the backlog spool here, and reuse it when it exists (filling a "
                             "million takes minutes): python -m bench.backlog DIR -n N fills one")
    parser.add_argument("--show", type=Path, metavar="JSON",
                        help="print the table of a saved run and exit (nothing is measured)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.messages = args.messages or (500 if quick else 5000)
    args.reps = args.reps or (1 if quick else 3)
    args.latency_count = args.latency_count or (200 if quick else 1000)
    args.connections = args.connections or (1000 if quick else 10000)
    if args.backlog is None:
        args.backlog = 100_000 if quick else 1_000_000
    args.sizes = args.sizes or ([4096] if args.cluster else [4096, 102400])
    args.sessions = args.sessions or ([100] if args.cluster else [20, 100])
    args.servers = args.only or (
        CLUSTER_SERVERS if args.cluster else DKIM_SERVERS if args.dkim else ["mailgate", "postfix"])
    args.scenarios = args.scenario or (["relay"] if args.cluster else list(SCENARIOS))
    peers.SIGNING["enabled"] = args.dkim
    peers.RECIPIENTS["mode"] = args.recipients
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


@contextlib.contextmanager
def relay_under_test(server: str, workdir: Path) -> Iterator[tuple[peers.ServerHandle, int,
                                                                   peers.CountingSink]]:
    """A fresh sink and a fresh server (empty spool) relaying to it; both stopped after.

    Before each measurement the disk is settled (sync, then a pause), so that the write-back a
    previous run left behind (5,000 queue files, say) is not charged to whichever server happens
    to be measured next: without it the order of the interleaved runs biased the latency tail.
    The same pause after the server starts lets both servers finish starting before the clock runs.
    """
    settle_disk()
    sink = peers.CountingSink(free_port())
    try:
        listen_port = free_port()
        handle = peers.SERVERS[server](workdir, listen_port, sink.port)
        try:
            settle_disk()  # and let the server finish starting (workers, start-up checks)
            yield handle, listen_port, sink
        finally:
            handle.stop()
    finally:
        sink.stop()


def settle_disk(pause: float = SETTLE_SECONDS) -> None:
    os.sync()
    time.sleep(pause)


def throughput_run(server: str, size: int, sessions: int, messages: int,
                   workdir: Path) -> dict[str, Any]:
    """smtp-source pushes N messages through the server into the sink; times, CPU, memory."""
    bound = max(120.0, messages / 5)  # seconds; generous, only there so nothing hangs
    with relay_under_test(server, workdir) as (handle, listen_port, sink):
        sink.expect(messages)
        cpu_before = procstat.tree_cpu_seconds(handle.pids)
        sampler = procstat.PeakMemorySampler(lambda: handle.pids).start()
        try:
            started, accepted = _send_load([listen_port, *handle.more_ports], messages, sessions, size, bound)
            delivered = sink.wait_for_total(timeout=bound)
        finally:
            memory = sampler.stop()
        cpu = procstat.tree_cpu_seconds(handle.pids) - cpu_before
    return {
        "server": server, "size": size, "sessions": sessions, "messages": messages,
        "accept_msgs_per_s": messages / (accepted - started),
        "end_to_end_msgs_per_s": messages / (delivered - started) if delivered else None,
        "sink_count": sink.count,
        "peak_pss_mib": memory.pss_bytes / MIB,
        "peak_rss_sum_mib": memory.rss_sum_bytes / MIB,
        "cpu_s_per_1000_msgs": cpu / messages * 1000,
    }


def _send_load(ports: list[int], messages: int, sessions: int, size: int, bound: float) -> tuple[float, float]:
    """smtp-source into each node at once, the messages and sessions split evenly (a cluster
    behind MX records of equal preference); (first start, last end)."""
    if len(ports) == 1:
        return clients.run_smtp_source(ports[0], messages, sessions, size, timeout=bound)
    from concurrent.futures import ThreadPoolExecutor

    share, sessions_each = messages // len(ports), max(1, sessions // len(ports))
    counts = [share + (1 if index < messages % len(ports) else 0) for index in range(len(ports))]
    with ThreadPoolExecutor(len(ports)) as pool:
        spans = list(pool.map(lambda item: clients.run_smtp_source(item[0], item[1], sessions_each, size, bound),
                              zip(ports, counts)))
    return min(start for start, _ in spans), max(end for _, end in spans)


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
    with relay_under_test(server, workdir) as (_, listen_port, _sink):
        result = clients.acceptance_latencies(listen_port, LATENCY_RATE, count, size)
    p50 = report.percentile(result.seconds, 0.50)
    p99 = report.percentile(result.seconds, 0.99)
    return {
        "server": server, "size": size, "sent": count, "accepted": len(result.seconds),
        "error_count": len(result.errors), "first_errors": result.errors[:5],
        "p50_ms": p50 * 1000 if p50 is not None else None,
        "p99_ms": p99 * 1000 if p99 is not None else None,
    }


def connection_run(server: str, count: int, deadline: float, workdir: Path) -> dict[str, Any]:
    """`count` idle connections at once: how many get their 220 greeting, how fast, what RAM."""
    with relay_under_test(server, workdir) as (handle, listen_port, _sink):
        pss_idle = procstat.tree_pss_bytes(handle.pids)
        result = clients.idle_connections(
            listen_port, count, deadline,
            measure_while_held=lambda: procstat.tree_pss_bytes(handle.pids))
    added = result.held_measurement - pss_idle
    fresh = result.fresh_client_seconds
    return {
        "fresh_client_ms": statistics.median(fresh) * 1000 if fresh else None,
        "fresh_client_max_ms": max(fresh) * 1000 if fresh else None,
        "fresh_client_errors": result.fresh_client_errors,
        "server": server, "requested": count, "greeted": result.greeted,
        "seconds_to_greet_all": result.seconds_to_greet_all,
        "idle_pss_mib": pss_idle / MIB, "held_pss_mib": result.held_measurement / MIB,
        "kib_per_greeted_connection": added / 1024 / result.greeted if result.greeted else None,
    }


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


def run_all(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every measurement, repetitions interleaved server by server. Over 60 lines because it is
    the one readable list of what the benchmark does, in order."""
    results: dict[str, Any] = {"throughput": [], "latency": [], "connections": [], "baseline": []}
    results["fsync"] = procstat.fsync_rates(workdir)
    _progress(f"disk fsync rates: {results['fsync']}")
    relay = "relay" in args.scenarios
    run_number = 0

    def fresh_dir(label: str) -> Path:
        nonlocal run_number
        run_number += 1
        path = workdir / f"{run_number:03d}-{label}"
        path.mkdir(mode=0o755)
        return path

    def done(path: Path, run: dict[str, Any]) -> None:
        """Frees the disk after a run; a failed run's spool and logs stay for a post-mortem."""
        if "error" in run:
            run["kept_workdir"] = str(path)
            _progress(f"kept {path} (logs of the failed run)")
        elif not args.keep_workdir:
            shutil.rmtree(path, ignore_errors=True)

    for rep in range(1, args.reps + 1):
        # Which server goes first alternates between repetitions: each run inherits the disk the
        # run before it left (a latency run right after the other server pushed 500 MB through
        # it measured slower), so neither server may always follow the same one.
        servers = args.servers if rep % 2 else list(reversed(args.servers))
        for size in args.sizes if relay else []:
            for sessions in args.sessions:
                case = {"rep": rep, "size": size, "sessions": sessions}
                baseline = attempt(case, lambda: baseline_run(size, sessions, args.messages))
                results["baseline"].append(baseline)
                _progress(f"rep {rep} baseline size={size} C={sessions}: "
                          f"{_fmt(baseline.get('accept_msgs_per_s'))} msg/s")
                for server in servers:
                    path = fresh_dir(f"{server}-throughput")
                    run = attempt({**case, "server": server}, lambda: throughput_run(
                        server, size, sessions, args.messages, path))
                    results["throughput"].append({"rep": rep, **run})
                    done(path, results["throughput"][-1])
                    _progress(f"rep {rep} {server} size={size} C={sessions}: "
                              f"accept {_fmt(run.get('accept_msgs_per_s'))} msg/s, "
                              f"e2e {_fmt(run.get('end_to_end_msgs_per_s'))} msg/s, "
                              f"peak PSS {_fmt(run.get('peak_pss_mib'))} MiB, "
                              f"{_fmt(run.get('cpu_s_per_1000_msgs'))} CPU s/1000")
            for server in servers:
                path = fresh_dir(f"{server}-latency")
                run = attempt({"rep": rep, "size": size, "server": server}, lambda: latency_run(
                    server, size, args.latency_count, path))
                results["latency"].append({"rep": rep, **run})
                done(path, results["latency"][-1])
                _progress(f"rep {rep} {server} latency size={size}: "
                          f"p50 {_fmt(run.get('p50_ms'))} ms, p99 {_fmt(run.get('p99_ms'))} ms, "
                          f"errors {run.get('error_count', '-')}")
        for server in servers if "connections" in args.scenarios else []:
            path = fresh_dir(f"{server}-connections")
            case = {"rep": rep, "requested": args.connections, "server": server}
            run = attempt(case, lambda: connection_run(
                server, args.connections, args.connection_deadline, path))
            results["connections"].append({"rep": rep, **run})
            done(path, results["connections"][-1])
            _progress(f"rep {rep} {server} {args.connections} idle connections: "
                      f"greeted {run.get('greeted', '-')} in "
                      f"{_fmt(run.get('seconds_to_greet_all'))} s, "
                      f"held PSS {_fmt(run.get('held_pss_mib'))} MiB")
    return results


RUN_FAILURES = (clients.LoadError, peers.PeerError, postfix.PostfixError,
                subprocess.TimeoutExpired, OSError)


def attempt(case: dict[str, Any], measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One measurement; a failure is recorded (and printed) instead of ending the whole run."""
    try:
        return measure()
    except RUN_FAILURES as error:
        _progress(f"FAILED {case}: {type(error).__name__}: {error}")
        return {**case, "error": f"{type(error).__name__}: {error}"}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def preflight(args: argparse.Namespace) -> str | None:
    """Why the run cannot start, or None."""
    for tool in (peers.SMTP_SINK, clients.SMTP_SOURCE):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing: install Postfix (apt-get install postfix)"
    if "postfix-dkim" in args.servers and opendkim_milter.available():
        return f"{opendkim_milter.available()}, or leave out --only postfix-dkim"
    if any(server.startswith("postfix") for server in args.servers) and os.geteuid() != 0:
        return ("the Postfix side needs root (Postfix's master runs as root): run with sudo, "
                "or use --only mailgate")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show:
        saved = json.loads(args.show.read_text())
        summary = report.summarise(saved["runs"], saved["parameters"]["servers"])
        print(report.markdown_table(summary, saved["runs"]))
        if len(report.shown_servers(summary)) > 2:
            print("\n" + report.setups_table(summary))
        if saved.get("backlog_summary"):
            print("\n" + backlog_runs.markdown_table(saved["backlog_summary"], saved["parameters"]["backlog"]))
        return 0
    problem = preflight(args)
    if problem:
        print(f"bench: {problem}", file=sys.stderr)
        return 2
    limit = raise_open_file_limit(args.connections + FD_HEADROOM)
    if limit < args.connections + FD_HEADROOM:
        args.connections = max(1, limit - FD_HEADROOM)
        _progress(f"RLIMIT_NOFILE is {limit}: connection test lowered to {args.connections}")
    workdir = args.workdir / time.strftime("%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, mode=0o755)
    for path in (workdir, *workdir.parents):  # Postfix daemons must reach their maildirs/logs
        if path == args.workdir.parent:
            break
        path.chmod(0o755)
    started = time.monotonic()
    results = run_all(args, workdir)
    if args.backlog and "mailgate" in args.servers and "backlog" in args.scenarios:
        results["backlog"] = backlog_runs.run_all(args, workdir, free_port, settle_disk, _progress)
    if not args.keep_workdir and not any(workdir.iterdir()):
        workdir.rmdir()  # kept only when a failed run left its logs in it
    summary = report.summarise(results, args.servers)
    document = {
        "machine": machine_description(workdir),
        "parameters": {
            "messages": args.messages, "reps": args.reps, "sizes": args.sizes,
            "sessions": args.sessions, "servers": args.servers, "dkim": args.dkim, "recipients": args.recipients,
            "latency_rate_per_s": LATENCY_RATE, "latency_count": args.latency_count,
            "connections": args.connections, "connection_deadline_s": args.connection_deadline,
            "open_file_limit": limit, "backlog": args.backlog,
        },
        "elapsed_s": time.monotonic() - started,
        "summary": summary,
        "runs": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(report.markdown_table(summary, results))
    if len(report.shown_servers(summary)) > 2:  # --cluster: one row per setup
        print("\n" + report.setups_table(summary))
    if results.get("backlog"):
        document["backlog_summary"] = backlog_runs.summarise(results["backlog"])
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print("\n" + backlog_runs.markdown_table(document["backlog_summary"], args.backlog))
    print(f"\nsaved {args.json} ({document['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
