"""`mailgate send`: a test message to any SMTP server, like swaks, with the transcript.

Owns: the arguments, reading the AUTH password (file, environment or terminal, never the
command line, where `ps` shows it), the transcript on stdout and the exit code.
Must not: speak SMTP (tools/sender.py does).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mailgate.tools.options import SEND_SUBJECT, SEND_TLS_MODES

if TYPE_CHECKING:
    from mailgate.tools.sender import SendSettings

PASSWORD_ENVIRONMENT = "MAILGATE_PASSWORD"

EPILOG = f"""examples:
  mailgate send --server 127.0.0.1:2525 --from me@example.org --to you@demo.test
  mailgate send --server mx.example.com --from a@example.org --to b@example.com --to c@example.com \\
      --subject "hello" --body "one line" --attach report.pdf
  mailgate send --server smtp.example.com:587 --user alice --password-file ~/.pw \\
      --from alice@example.com --to bob@example.net
  {PASSWORD_ENVIRONMENT}=secret mailgate send --server smtp.example.com:465 --tls implicit --user alice ...

TLS: by default STARTTLS is used when offered; --tls starttls requires it, --tls implicit is
TLS from the first byte (port 465), --tls none never encrypts. Certificates are not verified
unless --ca-file is given. AUTH (PLAIN, else LOGIN) is only ever sent inside TLS.
Password: --password-file, else ${PASSWORD_ENVIRONMENT}, else asked on the terminal.

exit codes: 0 the server accepted the message for every recipient, 1 the server refused the
  message or a recipient, 2 usage error, 3 connection, TLS or time-out problem"""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "send", help="send a test message and show the SMTP transcript",
        description="Send one test message to SERVER and print the whole conversation.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--server", required=True, metavar="HOST[:PORT]", help="server (port 25 by default)")
    parser.add_argument("--from", dest="mail_from", required=True, metavar="ADDRESS", help='sender ("" for <>)')
    parser.add_argument("--to", dest="recipients", action="append", required=True, metavar="ADDRESS",
                        help="recipient (repeatable)")
    parser.add_argument("--subject", default=SEND_SUBJECT)
    parser.add_argument("--body", help="body text (default: a short test text; '-' reads stdin)")
    parser.add_argument("--attach", action="append", default=[], metavar="FILE", help="attach FILE (repeatable)")
    parser.add_argument("--user", help="AUTH as USER (inside TLS only)")
    parser.add_argument("--password-file", metavar="FILE", help="file whose first line is the password")
    parser.add_argument("--tls", choices=SEND_TLS_MODES, help="starttls, implicit or none (default: STARTTLS when offered)")
    parser.add_argument("--ca-file", metavar="FILE", help="verify the server certificate against this CA bundle")
    parser.add_argument("--helo", default="localhost", help="EHLO name (default localhost)")
    parser.add_argument("--source-address", metavar="IP", help="local address to connect from")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per reply (default 30)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the result, not the transcript")
    parser.set_defaults(handler=send_command)


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        lines = Path(args.password_file).read_text().splitlines()
        return lines[0] if lines else ""
    if PASSWORD_ENVIRONMENT in os.environ:
        return os.environ[PASSWORD_ENVIRONMENT]
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {args.user}: ")
    return sys.stdin.readline().rstrip("\r\n")


def _settings(args: argparse.Namespace) -> SendSettings:
    """ValueError / OSError with a readable message for bad arguments."""
    from mailgate.config.types import parse_host_port
    from mailgate.tools.sender import SendSettings

    host, port = parse_host_port(args.server, 25)
    attachments = tuple(Path(name) for name in args.attach)
    for path in attachments:
        if not path.is_file():
            raise ValueError(f"--attach {path}: no such file")
    if args.body == "-":
        body = sys.stdin.read()
    else:
        body = (args.body + "\n") if args.body else SendSettings.body
    return SendSettings(
        host=host, port=port, mail_from=args.mail_from.strip("<>"),
        recipients=tuple(r.strip("<>") for r in args.recipients), subject=args.subject, body=body,
        attachments=attachments, user=args.user, password=_password(args) if args.user else None,
        tls=args.tls, helo=args.helo, timeout=args.timeout, ca_file=args.ca_file,
        source_address=args.source_address,
    )


def send_command(args: argparse.Namespace) -> int:
    import asyncio

    from mailgate.tools.sender import send_message

    try:
        settings = _settings(args)
    except (ValueError, OSError) as exc:
        print(f"mailgate send: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"connecting to {settings.host}:{settings.port} ...", file=sys.stderr, flush=True)
    result = asyncio.run(send_message(settings))
    if not args.quiet:
        print("\n".join(result.transcript))
        print()
    for recipient, reply in result.refused.items():
        print(f"refused: <{recipient}>: {reply}")
    if result.delivered:
        print(f"sent: {result.final_reply} ({len(result.accepted)} recipient(s){', ' + result.tls if result.tls else ''})")
        return 0 if not result.refused else 1
    print(f"not sent: {result.error}", file=sys.stderr)
    return 3 if result.failed_stage == "connection" else 1
