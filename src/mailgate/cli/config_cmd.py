"""`mailgate config check|show|reference`: validate, display and document the configuration.

Owns: those three sub-commands. Must not: validate anything itself (the loader does).
"""

from __future__ import annotations

import argparse
import sys

from mailgate.cli.config_option import DEFAULT_CONFIG, add_config_argument, load_config, load_config_or_report


def register(commands: argparse._SubParsersAction) -> None:
    config = commands.add_parser("config", help="check, show or document the configuration")
    sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    check = sub.add_parser("check", help="validate FILE and run every start-up check that needs no "
                           "socket; print each problem with its key path, exit 2 if any")
    show = sub.add_parser("show", help="print the effective configuration (defaults filled in, "
                          "credentials in URLs masked)")
    for parser in (check, show):
        parser.add_argument("file", nargs="?", help=f"the file (or --config FILE; default: {DEFAULT_CONFIG})")
        add_config_argument(parser)
    show.add_argument("--non-default", action="store_true",
                      help="only the keys set to something other than their default (like postconf -n)")
    check.set_defaults(handler=check_command)
    show.set_defaults(handler=show_command)
    reference = sub.add_parser("reference", help="print the Markdown reference of every key")
    reference.set_defaults(handler=reference_command)
    config.set_defaults(handler=lambda args: config.print_help() or 2)


def check_command(args: argparse.Namespace) -> int:
    from mailgate.config.loader import ConfigError
    from mailgate.preflight import startup_problems, startup_warnings

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
    for warning in startup_warnings(config):
        print(f"{config.source}: warning: {warning}", file=sys.stderr)
    print(f"{config.source}: OK")
    return 0


def show_command(args: argparse.Namespace) -> int:
    from mailgate.config.show import config_text

    config = load_config_or_report(args.file or args.config, "config show")
    if config is None:
        return 2
    sys.stdout.write(config_text(config, non_default=args.non_default))
    return 0


def reference_command(args: argparse.Namespace) -> int:
    from mailgate.config.reference import render_reference

    sys.stdout.write(render_reference())
    return 0
