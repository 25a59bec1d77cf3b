"""`mailgate serve`: run the relay in the foreground until SIGTERM or SIGINT.

Owns: choosing the configuration (--config, else the default path, else the embedded default
for a local try-out),
logging set-up for the foreground process, uvloop when available, and turning start-up
problems into one clear message per problem with exit code 2 (1 for an operating-system error,
which a service manager should retry). Must not: build components.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys

from mailgate.cli.config_option import DEFAULT_CONFIG, add_config_argument, load_config_or_report


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the relay",
        description=f"Run mailgate in the foreground. Without --config it reads {DEFAULT_CONFIG}; "
        "when that file does not exist it runs the embedded default: an MX listener on "
        "127.0.0.1:2525, spool in ./var, mail to anything@demo.test delivered into the Maildir "
        "./var/mailbox.",
    )
    add_config_argument(serve)
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    import asyncio

    from mailgate import supervisor
    from mailgate.app import Application
    from mailgate.startup_errors import StartupConflict, StartupError
    from mailgate.config.loader import EMBEDDED_SOURCE
    from mailgate.observe import diagnostics
    from mailgate.policy.shared_limits import RateTables
    from mailgate.start_gate import StartGate

    config = load_config_or_report(args.config, "serve")
    if config is None:
        return 2
    diagnostics.setup(config.log.level)
    if config.source == EMBEDDED_SOURCE:
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
                app = Application(config, worker_index=index, workers=count, start_gate=gate, rate_tables=rate_tables)
                await app.start()
            except StartupError as exc:  # the configuration: retrying cannot help
                for line in str(exc).splitlines():
                    print(f"mailgate: cannot start: {line}", file=sys.stderr)
                return 2
            except StartupConflict as exc:  # another process holds the node's name: exit 1, retry
                print(f"mailgate: cannot start: {exc}", file=sys.stderr)
                return 1
            except OSError as exc:  # the system (a file, a socket): exit 1, a service manager retries
                print(f"mailgate: cannot start: {exc}", file=sys.stderr)
                return 1
            # What start-up made lives as long as the worker: the collector's full passes (tens
            # of ms each, in the middle of the traffic) no longer walk it (docs/performance.md).
            gc.freeze()
            await app.run_until_stopped()
            return 0
        finally:
            stop_logging()

    workers = supervisor.worker_count(config)
    gate = StartGate(workers - 1) if workers > 1 else None
    # Made before the fork: every worker counts message rates in the same memory (issue 13 item 4).
    rate_tables = RateTables.create() if workers > 1 else None
    run_loop = uvloop.run if uvloop is not None else asyncio.run
    return supervisor.run(config, run_loop, worker)
