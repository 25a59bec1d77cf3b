"""The `--config` option every command that reads the configuration shares, and its default.

Owns: the documented default path (/etc/mailgate/mailgate.toml; the embedded loopback try-out
only when that file does not exist), the option's help text, turning a missing or invalid
file into one line per problem and exit code 2, and the set-up such a command repeats: its
parser with --config and an epilog kept as written (`add_configured_parser`), and its handler
given the loaded configuration (`with_config`). Must not: validate anything (config/loader.py).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the loader is imported when a command reads its configuration, not at start
    from mailgate.config.loader import Config

DEFAULT_CONFIG = "/etc/mailgate/mailgate.toml"
CONFIG_HELP = (f"configuration file (default: {DEFAULT_CONFIG}; the embedded loopback try-out "
               "when that file does not exist)")


def add_config_argument(parser: argparse.ArgumentParser, *, also_on_parent: bool = False) -> None:
    """`also_on_parent`: the parent command takes --config too (`queue --config F list`), so this
    sub-command must not overwrite the parent's value with its own default."""
    default = argparse.SUPPRESS if also_on_parent else None
    parser.add_argument("--config", metavar="FILE", default=default, help=CONFIG_HELP)


def load_config(path: str | None) -> Config:
    """The file given, else the default path when it exists, else the embedded default.

    Raises FileNotFoundError for a file given but missing, ConfigError, or another OSError."""
    from mailgate.config.loader import load_embedded, load_file

    if path:
        return load_file(path)
    if Path(DEFAULT_CONFIG).exists():
        return load_file(DEFAULT_CONFIG)
    return load_embedded()


def load_config_or_report(path: str | None, command: str) -> Config | None:
    """`load_config`, or None after printing each problem as `mailgate COMMAND: FILE: problem`."""
    from mailgate.config.loader import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        for error in exc.errors:
            print(f"mailgate {command}: {exc.source}: {error}", file=sys.stderr)
    except FileNotFoundError as exc:
        print(f"mailgate {command}: {exc.filename}: no such file", file=sys.stderr)
    except OSError as exc:
        print(f"mailgate {command}: {exc.filename}: {exc.strerror}", file=sys.stderr)
    return None


def add_configured_parser(commands: argparse._SubParsersAction, name: str, *, epilog: str,
                          **options: str) -> argparse.ArgumentParser:
    """A sub-command that reads the configuration: --config, and `epilog` printed as written."""
    parser = commands.add_parser(name, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter, **options)
    add_config_argument(parser)
    return parser


Handler = Callable[[argparse.Namespace], int]


def with_config(command: str) -> Callable[[Callable[[argparse.Namespace, Config], int]], Handler]:
    """The handler is called with the loaded configuration; when it cannot be loaded, each
    problem is one line (`mailgate COMMAND: FILE: problem`) and the exit code is 2."""

    def decorate(handler: Callable[[argparse.Namespace, Config], int]) -> Handler:
        @functools.wraps(handler)
        def run(args: argparse.Namespace) -> int:
            config = load_config_or_report(args.config, command)
            return 2 if config is None else handler(args, config)

        return run

    return decorate
