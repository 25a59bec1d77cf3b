"""`mailgate stats [--since 24h] [--json] [--top N] [--log FILE ...]`: a summary of the JSON log.

Owns: the arguments, finding the log files (the daily files of the configured `log.json_file`,
or the files named with --log), and printing. Must not: count (observe/stats.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mailgate.cli.config_option import add_config_argument, load_config_or_report

EXAMPLES = """examples:
  mailgate stats                               everything in the configured JSON log
  mailgate stats --since 24h --config /etc/mailgate/mailgate.toml
  mailgate stats --log /var/log/mailgate/transactions-20250131.jsonl --json

exit codes: 0 success, 1 no log file found, 2 usage or configuration error"""


def register(commands: argparse._SubParsersAction) -> None:
    stats = commands.add_parser(
        "stats", help="summary of the transaction log (like pflogsumm)", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(stats)
    stats.add_argument("--log", action="append", default=[], metavar="FILE",
                       help="JSON log file to read (repeatable); default: the daily files of log.json_file")
    stats.add_argument("--since", help="only records newer than this (e.g. 24h, 7d, 90m)")
    stats.add_argument("--top", type=int, default=10, help="rows in each top list (default 10)")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(handler=stats_command)


def stats_command(args: argparse.Namespace) -> int:
    from mailgate.config.types import Duration
    from mailgate.observe import jsonlog
    from mailgate.observe.stats import format_report, summarise

    try:
        since = time.time() - Duration(minimum=0).convert(args.since) if args.since else None
    except ValueError as exc:
        print(f"mailgate stats: --since: {exc}", file=sys.stderr)
        return 2
    paths = [Path(p) for p in args.log]
    if not paths:
        config = load_config_or_report(args.config, "stats")
        if config is None:
            return 2
        paths = jsonlog.log_files(config.log.json_file) if config.log.json_file else []
    existing = [p for p in paths if p.exists()]
    if not existing:
        print("mailgate stats: no JSON log file found (set log.json_file or give --log FILE)", file=sys.stderr)
        return 1
    summary = summarise(jsonlog.read_records(existing, since), top=max(1, args.top))
    if args.json:
        json.dump(summary, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_report(summary))
    return 0

