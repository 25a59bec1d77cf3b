"""`mailgate config check|show|reference`: validate, display and document the configuration.

Owns: those three sub-commands. Must not: validate anything itself (the loader does).
"""

from __future__ import annotations

import argparse
import sys

from mailgate.cli.config_option import DEFAULT_CONFIG, add_config_argument, load_config, load_config_or_report
from mailgate.config.loader import ConfigError
from mailgate.config.reference import render_reference
from mailgate.config.schema import REQUIRED, SECTIONS, Key
from mailgate.config.types import format_host_port


def register(commands: argparse._SubParsersAction) -> None:
    config = commands.add_parser("config", help="check, show or document the configuration")
    sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    check = sub.add_parser("check", help="validate FILE and run every start-up check that needs no "
                           "socket; print each problem with its key path, exit 2 if any")
    show = sub.add_parser("show", help="print the effective configuration (defaults filled in)")
    for parser in (check, show):
        parser.add_argument("file", nargs="?", help=f"the file (or --config FILE; default: {DEFAULT_CONFIG})")
        add_config_argument(parser)
    show.add_argument("--non-default", action="store_true",
                      help="only the keys set to something other than their default (like postconf -n)")
    check.set_defaults(handler=check_command)
    show.set_defaults(handler=show_command)
    reference = sub.add_parser("reference", help="print the Markdown reference of every key")
    reference.set_defaults(handler=lambda args: sys.stdout.write(render_reference()) and 0)
    config.set_defaults(handler=lambda args: config.print_help() or 2)


def check_command(args: argparse.Namespace) -> int:
    from mailgate.preflight import startup_problems

    try:
        config = load_config(args.file or args.config)
    except FileNotFoundError as exc:
        print(f"{exc.filename}: no such file", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        for error in exc.errors:
            print(f"{exc.source}: {error}", file=sys.stderr)
        print(f"{len(exc.errors)} error(s)", file=sys.stderr)
        return 2
    problems = startup_problems(config)
    for problem in problems:
        print(f"{config.source}: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s): mailgate serve would refuse to start", file=sys.stderr)
        return 2
    print(f"{config.source}: OK")
    return 0


def show_command(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.file or args.config, "config show")
    if config is None:
        return 2
    for section in SECTIONS:
        tables = getattr(config, section.name)
        for table in tables if section.array else [tables]:
            keys = [key for key in section.keys if not (args.non_default and _is_default(key, getattr(table, key.name)))]
            if not keys and not section.array:
                continue  # --non-default: a section left at its defaults is not shown
            print(f"[[{section.name}]]" if section.array else f"[{section.name}]")
            for key in keys:
                print(f"{key.name} = {_render(key, getattr(table, key.name))}")
            print()
    return 0


def _is_default(key: Key, value) -> bool:
    if key.default is REQUIRED:
        return False
    default = list(key.default) if isinstance(key.default, tuple) else key.default
    return key.kind.convert(default) == value


def _render(key, value) -> str:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int) and isinstance(value[0], str):
        return f'"{format_host_port(value)}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return key.kind.render(value)
