"""Turning raw benchmark runs into medians, ratios to Postfix and printable tables.

Owns: percentiles, grouping repetitions, the summary dictionary saved in the JSON, the
Markdown table printed at the end (the same table docs/performance.md shows: one column per
server measured, one ratio to Postfix per mailgate setup), and the setups table of a cluster
run (one row per setup: SQLite, one node on PostgreSQL, two nodes, Postfix; docs/cluster.md).
Must NOT: run anything; it is pure.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any


# (key in a throughput run, label, unit, "higher is better")
THROUGHPUT_METRICS = (
    ("accept_msgs_per_s", "accept throughput", "msg/s", True),
    ("end_to_end_msgs_per_s", "end-to-end throughput", "msg/s", True),
    ("peak_pss_mib", "peak memory, PSS of all processes", "MiB", False),
    ("peak_rss_sum_mib", "peak memory, summed RSS of all processes", "MiB", False),
    ("cpu_s_per_1000_msgs", "CPU per 1000 messages", "s", False),
)
LATENCY_METRICS = (
    ("p50_ms", "acceptance latency p50 @100 msg/s", "ms", False),
    ("p99_ms", "acceptance latency p99 @100 msg/s", "ms", False),
)
CONNECTION_METRICS = (
    ("greeted", "idle connections greeted", "", True),
    ("seconds_to_greet_all", "time to greet them all", "s", False),
    ("held_pss_mib", "memory (PSS) with them all open", "MiB", False),
    ("kib_per_greeted_connection", "memory per greeted connection", "KiB", False),
    ("fresh_client_ms", "a fresh client, connect to EHLO reply, while they are held (median of 5)",
     "ms", False),
)


# How the tables name each server of bench/peers.py SERVERS.
SERVER_LABELS = {
    "mailgate": "mailgate",
    "mailgate-pg": "mailgate 1 node PostgreSQL",
    "mailgate-pg-2nodes": "mailgate 2 nodes 1 PostgreSQL",
    "postfix": "Postfix",
    "postfix-dkim": "Postfix + OpenDKIM",
}


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (fraction in 0..1) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median_of(runs: Iterable[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def ratio(mailgate: float | None, postfix: float | None) -> float | None:
    if mailgate is None or postfix is None or postfix == 0:
        return None
    return mailgate / postfix


def summarise(results: dict[str, Any], servers: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (metric, case): the median per server and the mailgate/Postfix ratio."""
    rows: list[dict[str, Any]] = []
    sections = (
        ("throughput", THROUGHPUT_METRICS, ("size", "sessions")),
        ("latency", LATENCY_METRICS, ("size",)),
        ("connections", CONNECTION_METRICS, ("requested",)),
    )
    for section, metrics, case_keys in sections:
        cases = sorted({tuple(run[key] for key in case_keys) for run in results[section]})
        for key, label, unit, higher_is_better in metrics:
            for case in cases:
                matching = [
                    run for run in results[section]
                    if tuple(run[k] for k in case_keys) == case
                ]
                per_server = {
                    server: [run for run in matching if run["server"] == server]
                    for server in servers
                }
                medians = {server: median_of(runs, key) for server, runs in per_server.items()}
                rows.append({
                    "metric": key,
                    "label": label,
                    "unit": unit,
                    "higher_is_better": higher_is_better,
                    "case": dict(zip(case_keys, case)),
                    "medians": medians,
                    "runs_measured": {
                        server: sum(1 for run in runs if run.get(key) is not None)
                        for server, runs in per_server.items()
                    },
                    "runs_attempted": {server: len(runs) for server, runs in per_server.items()},
                    "ratio_mailgate_to_postfix": ratio(medians.get("mailgate"),
                                                       medians.get("postfix")),
                    "ratios_to_postfix": {
                        server: ratio(medians[server], medians.get("postfix"))
                        for server in servers if server != "postfix"
                    },
                })
    return rows


def _case_text(case: dict[str, Any]) -> str:
    parts = []
    if "size" in case:
        parts.append(f"{case['size'] // 1024} KiB")
    if "sessions" in case:
        parts.append(f"C={case['sessions']}")
    if "requested" in case:
        parts.append(f"{case['requested']} conns")
    return ", ".join(parts)


def format_number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _cell(row: dict[str, Any], server: str) -> str:
    """The median, with "(k of n)" when some repetitions gave no figure (failed runs)."""
    text = format_number(row["medians"].get(server))
    measured = row["runs_measured"].get(server, 0)
    attempted = row["runs_attempted"].get(server, 0)
    if text != "-" and measured < attempted:
        text += f" ({measured} of {attempted})"
    return text


def shown_servers(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The servers of a summary in table order: the mailgate setups as measured, Postfix last."""
    servers = list(rows[0]["medians"]) if rows else []
    return [server for server in servers if server != "postfix"] + (["postfix"] if "postfix" in servers else [])


def _label(server: str) -> str:
    return SERVER_LABELS.get(server, server)


def markdown_table(rows: Sequence[dict[str, Any]], extras: dict[str, Any]) -> str:
    """The summary as a Markdown table (a column per server, a ratio to Postfix per mailgate
    setup), then the reference figures (disk, sink baseline)."""
    servers = shown_servers(rows)
    compared = [server for server in servers if server != "postfix"] if "postfix" in servers else []
    header = ["metric", "case", *map(_label, servers), *(f"{_label(server)}/Postfix" for server in compared)]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in rows:
        unit = f" ({row['unit']})" if row["unit"] else ""
        better = "higher" if row["higher_is_better"] else "lower"
        cells = [_cell(row, server) for server in servers]
        cells += [format_number(ratio(row["medians"].get(server), row["medians"].get("postfix"))) for server in compared]
        lines.append(f"| {row['label']}{unit}, {better} is better | {_case_text(row['case'])} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| reference (no relay) | case | median |")
    lines.append("|---|---|---:|")
    for name, value in extras["fsync"].items():
        lines.append(f"| disk: {name.replace('_', ' ')} | spool filesystem | {format_number(value)} |")
    baseline_cases = sorted({(run["size"], run["sessions"]) for run in extras["baseline"]})
    for size, sessions in baseline_cases:
        runs = [r for r in extras["baseline"] if (r["size"], r["sessions"]) == (size, sessions)]
        lines.append(
            f"| smtp-source into smtp-sink (msg/s) | {size // 1024} KiB, C={sessions} "
            f"| {format_number(median_of(runs, 'accept_msgs_per_s'))} |"
        )
    return "\n".join(lines)


# (metric key in the summary, column heading) of the setups table
SETUP_COLUMNS = (
    ("accept_msgs_per_s", "accept msg/s"),
    ("end_to_end_msgs_per_s", "end-to-end msg/s"),
    ("cpu_s_per_1000_msgs", "CPU s/1000 msgs"),
    ("peak_pss_mib", "peak PSS MiB"),
    ("p50_ms", "latency p50 ms"),
    ("p99_ms", "latency p99 ms"),
)


def setups_table(rows: Sequence[dict[str, Any]]) -> str:
    """One row per server and throughput case (the cluster figures of docs/cluster.md): its
    medians, the end-to-end ratio to Postfix, and the latency at 100 msg/s for the same size."""
    servers = shown_servers(rows)
    by_metric = {(row["metric"], tuple(sorted(row["case"].items()))): row for row in rows}
    cases = [row["case"] for row in rows if row["metric"] == "end_to_end_msgs_per_s"]
    references = [server for server in ("postfix", "postfix-dkim") if server in servers]
    header = ["setup", "case", *(heading for _, heading in SETUP_COLUMNS),
              *(f"end-to-end vs {_label(server)}" for server in references)]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for case in cases:
        for server in servers:
            cells = []
            for metric, _ in SETUP_COLUMNS:
                keyed = case if not metric.endswith("_ms") else {"size": case["size"]}
                row = by_metric.get((metric, tuple(sorted(keyed.items()))))
                cells.append(_cell(row, server) if row is not None else "-")
            e2e = by_metric[("end_to_end_msgs_per_s", tuple(sorted(case.items())))]["medians"]
            cells.extend(format_number(ratio(e2e.get(server), e2e.get(reference))) for reference in references)
            setup = "mailgate 1 node SQLite" if server == "mailgate" else _label(server)
            lines.append(f"| {setup} | {_case_text(case)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
