"""The `mailgate` command line: argument parsing and dispatch to one module per command.

Owns: the top-level parser, exit codes (0 ok, 1 operation failed, 2 usage or configuration
error) and the `mailq` alias. Must not: contain the logic of any command beyond dispatch.

Every command module builds its parser from light imports only (argparse, the standard library,
constants such as tools/options.py); what a command needs to run (the configuration loader,
the store, cryptography, dnspython, the server) its handler imports when it runs. So each start
pays only for the command given: parsing alone loads nothing heavy
(tests/unit/test_cli_startup.py).
"""

from __future__ import annotations

import argparse
import os
import sys

from mailgate import __version__
from mailgate.cli import (
    cert_cmd, config_cmd, dkim_cmd, explain_cmd, mx_cmd, queue_cmd, recipients_cmd, relay_test_cmd, screen_cmd, send_cmd,
    serve_cmd, stats_cmd, user_cmd,
)

EPILOG = """examples:
  mailgate serve                       run /etc/mailgate/mailgate.toml (when it does not exist:
                                       the embedded loopback try-out, spool in ./var)
  mailgate serve --config ./mailgate.toml
  mailgate config check mailgate.toml  list every problem serve would refuse to start with, exit 2
  mailgate queue list --state deferred
  mailgate user add alice@example.com  (password read from the terminal or stdin)
  mailgate mx example.com --probe      MX hosts, addresses, banner, STARTTLS, certificate
  mailgate relay-test mx.example.com   the open-relay test of any server (stops after RCPT)
  mailgate explain --client 203.0.113.5 --from a@b.example --to c@d.example
  mailgate send --server 127.0.0.1:2525 --from me@example.org --to you@demo.test
  mailgate stats --since 24h           a pflogsumm-like summary of the transaction log
  mailgate screen test rules.toml sample.eml   which screen rule a sample message meets
  mailgate dkim keygen example.com --selector 2026a   a DKIM key and the DNS record to publish
  mailgate recipients check alice@example.com  ask the domain's recipient sources (LDAP, call-ahead)

exit codes: 0 success, 1 the operation failed (relay-test: OPEN), 2 usage or configuration
error, 3 inconclusive or could not connect (relay-test, mx --probe, send)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailgate",
        description="mailgate: an SMTP relay that is never an open relay.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=lambda args: print(f"mailgate {__version__}") or 0)
    serve_cmd.register(commands)
    config_cmd.register(commands)
    queue_cmd.register(commands)
    user_cmd.register(commands)
    mx_cmd.register(commands)
    relay_test_cmd.register(commands)
    explain_cmd.register(commands)
    send_cmd.register(commands)
    cert_cmd.register(commands)
    stats_cmd.register(commands)
    dkim_cmd.register(commands)
    screen_cmd.register(commands)
    recipients_cmd.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 1
    except BrokenPipeError:
        # The reader went away (`mailgate config show | head`): no traceback, and nothing more
        # to write, not even at exit (Python's documented recipe for SIGPIPE).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def mailq() -> int:
    """`mailq`: the same as `mailgate queue list` (as with Postfix and Exim)."""
    return main(["queue", "list", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
