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

from mailgate.config.loader import ConfigError, load_embedded, load_file
from mailgate.config.types import Duration
from mailgate.observe import jsonlog
from mailgate.observe.stats import format_report, summarise

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
    stats.add_argument("--config", help="configuration file (default: the embedded default)")
    stats.add_argument("--log", action="append", default=[], metavar="FILE",
                       help="JSON log file to read (repeatable); default: the daily files of log.json_file")
    stats.add_argument("--since", help="only records newer than this (e.g. 24h, 7d, 90m)")
    stats.add_argument("--top", type=int, default=10, help="rows in each top list (default 10)")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(handler=stats_command)


def stats_command(args: argparse.Namespace) -> int:
    try:
        since = time.time() - Duration(minimum=0).convert(args.since) if args.since else None
        paths = [Path(p) for p in args.log] or _configured_files(args.config)
    except ValueError as exc:
        print(f"mailgate stats: --since: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, FileNotFoundError) as exc:
        print(f"mailgate stats: {exc}", file=sys.stderr)
        return 2
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


def _configured_files(config_path: str | None) -> list[Path]:
    config = load_file(config_path) if config_path else load_embedded()
    json_file = config.log.json_file
    return jsonlog.log_files(json_file) if json_file else []
