"""`mailgate serve`: run the relay in the foreground until SIGTERM or SIGINT.

Owns: choosing the configuration (a file, or the embedded default for a local try-out),
logging set-up for the foreground process, uvloop when available, and turning start-up
problems into one clear message per problem with exit code 2. Must not: build components.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from mailgate import supervisor
from mailgate.config.loader import ConfigError, load_embedded, load_file
from mailgate.observe import diagnostics


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the relay (no --config: the embedded loopback try-out)",
        description="Run mailgate in the foreground. Without --config it runs the embedded default: "
        "an MX listener on 127.0.0.1:2525, spool in ./var, mail to anything@demo.test delivered "
        "into the Maildir ./var/mailbox.",
    )
    serve.add_argument("--config", help="TOML configuration file")
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from mailgate.app import Application
    from mailgate.app_config import StartupError

    try:
        config = load_file(args.config) if args.config else load_embedded()
    except FileNotFoundError:
        print(f"mailgate: {args.config}: no such file", file=sys.stderr)
        return 2
    except ConfigError as exc:
        for error in exc.errors:
            print(f"mailgate: {exc.source}: {error}", file=sys.stderr)
        return 2
    diagnostics.setup(config.log.level)
    if not args.config:
        logging.getLogger("mailgate").info(
            "running the embedded default: try  mailgate send or swaks --server 127.0.0.1:2525 --to you@demo.test"
        )
    # The queue's writer thread holds the GIL between SQLite calls; a short switch interval keeps
    # the event loop from waiting up to 5 ms for it after every socket call (GIL convoy).
    sys.setswitchinterval(0.0005)
    try:
        import uvloop
    except ImportError:
        uvloop = None

    async def worker(index: int, count: int) -> int:
        stop_logging = diagnostics.off_the_loop()
        try:
            try:
                app = Application(config, worker_index=index, workers=count)
                await app.start()
            except (StartupError, OSError) as exc:
                for line in str(exc).splitlines():
                    print(f"mailgate: cannot start: {line}", file=sys.stderr)
                return 2
            await app.run_until_stopped()
            return 0
        finally:
            stop_logging()

    run_loop = uvloop.run if uvloop is not None else asyncio.run
    return supervisor.run(config, run_loop, worker)
