"""`mailgate screen test RULES MESSAGE.eml`: try screen rules on a sample message.

Owns: the arguments (the envelope the rules see: direction, sender, recipients, client, HELO),
reading RULES (a file of `[[screen_rule]]` tables, optionally `[screen]`; or a whole
configuration file) through the configuration loader exactly as `serve` does, and printing the
verdict: action, deciding rule, reason, reply, every rule that matched, added headers.
Must not: decide anything (the real `Screener` does) or contact clamd or rspamd: only the rules
are tried, so a sample can be tested anywhere.

Exit codes: 0 accepted, 1 any other verdict (reject, tempfail, quarantine, strip, tag), 2 usage
or configuration error.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailgate.config.loader import Config

EPILOG = """examples:
  mailgate screen test rules.toml sample.eml
  mailgate screen test /etc/mailgate/mailgate.toml sample.eml --direction outbound --from a@corp.example

RULES holds [[screen_rule]] tables (and optionally [screen]), or is a whole configuration file;
clamd and rspamd are not asked.

exit codes: 0 the message would be accepted, 1 any other verdict, 2 usage or configuration error"""
RULE_SECTIONS = ("screen_rule", "screen")


def register(commands: argparse._SubParsersAction) -> None:
    screen = commands.add_parser("screen", help="try screen rules on a sample message")
    actions = screen.add_subparsers(dest="screen_action", metavar="ACTION", required=True)
    test = actions.add_parser(
        "test", help="screen MESSAGE with the rules in RULES and print the verdict",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    test.add_argument("rules", metavar="RULES", help="file of [[screen_rule]] tables, or a configuration file")
    test.add_argument("message", metavar="MESSAGE.eml", help="the message, as it would be received")
    test.add_argument("--direction", choices=("inbound", "outbound"), default="inbound")
    test.add_argument("--from", dest="sender", default="sender@example.net", metavar="ADDRESS",
                      help='envelope sender ("" for the null sender <>)')
    test.add_argument("--to", dest="recipients", action="append", metavar="ADDRESS",
                      help="envelope recipient (repeatable; default recipient@example.com)")
    test.add_argument("--client", default="192.0.2.1", metavar="IP", help="the client's address")
    test.add_argument("--helo", default="client.example.net", help="the client's EHLO name")
    test.set_defaults(handler=screen_test_command)


def load_rules(path: str) -> Config:
    """The validated configuration holding RULES' screen rules (ConfigError, OSError)."""
    import tomllib
    from importlib import resources

    from mailgate.config.loader import load_text

    text = Path(path).read_text("utf-8")
    try:
        sections = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        sections = {}  # the loader reports it
    if sections and all(name in RULE_SECTIONS for name in sections):
        embedded = resources.files("mailgate.config").joinpath("embedded.toml").read_text("utf-8")
        text = embedded + "\n" + text
    return load_text(text, source=path)


def screen_test_command(args: argparse.Namespace) -> int:
    import asyncio

    from mailgate.app_config import StartupError, build_screener
    from mailgate.config.loader import ConfigError
    from mailgate.screen import ScreenContext

    try:
        config = load_rules(args.rules)
        data = Path(args.message).read_bytes()
    except ConfigError as exc:
        for error in exc.errors:
            print(f"mailgate screen: {args.rules}: {error}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mailgate screen: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    config.antivirus.clamd = ""
    config.spam.rspamd_url = ""
    try:
        screener = build_screener(config)
    except StartupError as exc:
        print(f"mailgate screen: {args.rules}: {exc}", file=sys.stderr)
        return 2
    if screener is None:
        print(f"mailgate screen: {args.rules}: no [[screen_rule]] to try", file=sys.stderr)
        return 2
    context = ScreenContext(args.direction, args.sender, args.recipients or ["recipient@example.com"],
                            args.client, args.helo)
    verdict = asyncio.run(screener.screen(context, lambda: io.BytesIO(data), len(data)))
    print(f"verdict: {verdict.action}")
    if verdict.rule:
        print(f"rule:    {verdict.rule}")
        print(f"reason:  {verdict.reason}")
    if verdict.reply is not None:
        print(f"reply:   {verdict.reply.encode().decode('utf-8', 'replace').strip()}")
    if verdict.matched:
        print(f"matched: {', '.join(verdict.matched)}")
    for name, value in verdict.add_headers:
        print(f"header:  {name}: {value}")
    return 0 if verdict.action == "accept" else 1

