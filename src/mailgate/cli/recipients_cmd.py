"""`mailgate recipients check ADDRESS...`: ask a hosted domain's recipient sources directly.

Owns: the arguments, building the sources exactly as the server does (app_config), printing
each source's answer (found, not found, unavailable, with the detail: a directory error or the
next hop's reply) and the reply the server would give at RCPT.
Must not: decide anything (recipients/ does) or touch the queue.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from mailgate.cli.config_option import add_configured_parser, with_config

if TYPE_CHECKING:
    from mailgate.config.loader import Config

EPILOG = """examples:
  mailgate recipients check alice@corp.example
  mailgate recipients check --config /etc/mailgate/mailgate.toml nobody@corp.example bob@corp.example

A fresh process has empty caches, so every source is really asked (LDAP is searched, the next
hop is probed with MAIL FROM:<> and RCPT TO, never DATA).

exit codes: 0 every address is found, 1 at least one is unknown or a source could not answer,
  2 usage or configuration error (including an address whose domain has no recipient sources)"""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "recipients", help="ask the hosted domains' recipient sources (LDAP, call-ahead, map files)",
        description="Recipient validation: ask the sources a hosted domain is configured with.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = add_configured_parser(actions, "check", epilog=EPILOG, help="look addresses up as RCPT TO would")
    check.add_argument("addresses", nargs="+", metavar="ADDRESS")
    check.set_defaults(handler=check_command)


@with_config("recipients")
def check_command(args: argparse.Namespace, config: Config) -> int:
    import asyncio

    from mailgate.app_config import StartupError, policy_settings, recipient_validation
    from mailgate.core.address import AddressError, parse_mailbox
    from mailgate.policy.relay import RelayPolicy

    policy = RelayPolicy(policy_settings(config))
    targets = []
    for text in args.addresses:
        try:
            address = parse_mailbox(text.strip("<>"), smtputf8=True)
        except AddressError as exc:
            print(f"mailgate recipients: {text}: {exc}", file=sys.stderr)
            return 2
        hosted = policy.hosted_name(address)
        if hosted is None:
            print(f"mailgate recipients: {text}: {address.domain} is not a hosted domain", file=sys.stderr)
            return 2
        targets.append((address, hosted))
    try:
        validation = recipient_validation(config)
    except StartupError as exc:
        print(f"mailgate recipients: {exc}", file=sys.stderr)
        return 2
    unsourced = [str(address) for address, hosted in targets if validation is None or validation.chain_for(hosted) is None]
    if unsourced:
        print(f"mailgate recipients: no recipient_sources for {', '.join(unsourced)} (any local part is accepted)",
              file=sys.stderr)
        return 2
    try:
        verdicts = asyncio.run(_check_all(validation, targets))
    finally:
        validation.close()
    for (address, _), verdict in zip(targets, verdicts):
        print(f"<{address}>: {'accepted' if verdict.reply is None else verdict.reply}")
        for lookup in verdict.lookups:
            detail = f" ({lookup.detail})" if lookup.detail else ""
            print(f"  {lookup.source}: {lookup.status.value}{detail}")
    return 0 if all(verdict.reply is None for verdict in verdicts) else 1


async def _check_all(validation, targets):
    return [await validation.check(hosted, str(address)) for address, hosted in targets]
