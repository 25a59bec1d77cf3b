"""`mailgate dkim keygen|check`: make a DKIM key and print its DNS record; check what DNS publishes.

Owns: the arguments, the output (the TXT record to publish and the [[dkim_key]] lines to add;
one line per selector checked) and the exit codes. Must not: generate, parse or compare keys
itself (auth/dkim_keys.py does) or resolve without the DNS seam (dns/resolver.py).

exit codes: 0 done / every active key is published as configured; 1 a record is missing, differs
or the key file cannot be used; 2 usage or configuration error; 3 DNS failed temporarily.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mailgate.auth.dkim_key_types import DEFAULT_RSA_BITS, KEY_TYPES
from mailgate.cli.config_option import add_config_argument, load_config_or_report

if TYPE_CHECKING:
    from mailgate.auth.dkim_keys import DkimKey
    from mailgate.dns.resolver import Resolver

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DNS = 0, 1, 2, 3
DEFAULT_KEY_DIR = "./var/dkim"

EPILOG = """examples:
  mailgate dkim keygen example.com --selector 2026a                 RSA 2048, ./var/dkim/example.com.2026a.key
  mailgate dkim keygen example.com --selector 2026e --type ed25519  Ed25519 key to sign beside it (RFC 8463)
  mailgate dkim check example.com --config /etc/mailgate/mailgate.toml
  mailgate dkim check example.com --selector 2026a --key-file k.pem --nameserver 127.0.0.1 --dns-port 5353

exit codes: 0 done / every key checked is published, 1 a record is missing or differs, or a key
  file is unusable, 2 usage or configuration error, 3 DNS failed temporarily"""


def register(commands: argparse._SubParsersAction) -> None:
    dkim = commands.add_parser(
        "dkim", help="make DKIM keys and check their DNS records", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = dkim.add_subparsers(dest="dkim_action", metavar="ACTION")
    keygen = actions.add_parser("keygen", help="write a new private key (mode 0600) and print the TXT record")
    keygen.add_argument("domain")
    keygen.add_argument("--selector", required=True, help="the s= selector, e.g. 2026a")
    keygen.add_argument("--type", choices=KEY_TYPES, default="rsa", help="rsa (2048 bits) or ed25519")
    keygen.add_argument("--bits", type=int, default=DEFAULT_RSA_BITS, help="RSA key size (default 2048)")
    keygen.add_argument("--key-file", help=f"where to write the key (default {DEFAULT_KEY_DIR}/DOMAIN.SELECTOR.key)")
    keygen.set_defaults(handler=keygen_command)
    check = actions.add_parser("check", help="look the records up and confirm they carry the keys")
    check.add_argument("domain")
    add_config_argument(check)
    check.add_argument("--selector", help="check only this selector (with --key-file: this key)")
    check.add_argument("--key-file", help="the private key to compare (instead of the configuration)")
    check.add_argument("--nameserver", action="append", metavar="IP", help="DNS server (default: the configuration's)")
    check.add_argument("--dns-port", type=int, help="DNS server port")
    check.set_defaults(handler=check_command)
    dkim.set_defaults(handler=lambda args: dkim.print_help() or EXIT_USAGE)


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"mailgate dkim: {message}", file=sys.stderr)
    return code


def keygen_command(args: argparse.Namespace) -> int:
    from mailgate.auth.dkim_keys import DkimKeyError, generate_private_key, key_from_bytes, write_private_key
    from mailgate.core.address import AddressError, normalise_domain

    try:
        domain = normalise_domain(args.domain.strip())
    except AddressError as exc:
        return _fail(f"{args.domain}: {exc}")
    if not args.selector.replace("-", "").replace(".", "").replace("_", "").isalnum():
        return _fail(f"selector {args.selector!r}: letters, digits, '-', '_' and '.' only (RFC 6376 §3.1)")
    path = Path(args.key_file or f"{DEFAULT_KEY_DIR}/{domain}.{args.selector}.key")
    try:
        pem = generate_private_key(args.type, args.bits)
        write_private_key(path, pem)
    except DkimKeyError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except OSError as exc:
        return _fail(f"{path}: {exc.strerror or exc}", EXIT_FAILED)
    key = key_from_bytes(pem, domain, args.selector, str(path))
    print(f"; private key written to {path} (mode 0600)")
    print("; publish this record in DNS:")
    print(key.zone_line())
    print("; and add to the configuration:")
    print(f'[[dkim_key]]\ndomain = "{domain}"\nselector = "{args.selector}"\nkey_file = "{path}"')
    return EXIT_OK


def check_command(args: argparse.Namespace) -> int:
    import asyncio

    from mailgate.auth.dkim_keys import DkimKeyError
    from mailgate.core.address import AddressError, normalise_domain
    from mailgate.dns.resolver import DnsPythonResolver

    try:
        domain = normalise_domain(args.domain.strip())
    except AddressError as exc:
        return _fail(f"{args.domain}: {exc}")
    config = load_config_or_report(args.config, "dkim")
    if config is None:
        return EXIT_USAGE
    try:
        keys = _keys(args, config, domain)
    except DkimKeyError as exc:
        return _fail(str(exc), EXIT_FAILED)
    if not keys:
        return _fail(f"no key for {domain}: give --selector and --key-file, or --config with a [[dkim_key]]")
    resolver = DnsPythonResolver(
        args.nameserver or list(config.dns.nameservers) or None, args.dns_port or config.dns.port, config.dns.timeout
    )
    outcomes = asyncio.run(_check_all(resolver, keys))
    for key, outcome in zip(keys, outcomes):
        print(f"{key.record_name} ({key.key_type}): {outcome[1]}")
    return max((code for code, _ in outcomes), default=EXIT_OK)


def _keys(args: argparse.Namespace, config, domain: str) -> list[DkimKey]:
    from mailgate.auth.dkim_keys import DkimKeyError, load_key
    from mailgate.core.address import AddressError, normalise_domain

    if args.key_file:
        if not args.selector:
            raise DkimKeyError("--key-file needs --selector")
        return [load_key(args.key_file, domain, args.selector)]
    keys = []
    for entry in config.dkim_key:
        try:
            same = normalise_domain(entry.domain.strip()) == domain
        except AddressError:
            continue
        if same and (not args.selector or entry.selector == args.selector):
            keys.append(load_key(entry.key_file, domain, entry.selector))
    return keys


async def _check_all(resolver: Resolver, keys: list[DkimKey]) -> list[tuple[int, str]]:
    import asyncio

    return list(await asyncio.gather(*(check_published(resolver, key) for key in keys)))


async def check_published(resolver: Resolver, key: DkimKey) -> tuple[int, str]:
    """(exit code, text) for one key: is its record published and does it carry this key?"""
    from mailgate.auth.dkim_keys import record_matches
    from mailgate.dns.resolver import DnsNoSuchDomain, DnsTemporaryError

    try:
        records = await resolver.txt(key.record_name)
    except DnsTemporaryError as exc:
        return EXIT_DNS, f"DNS failed temporarily ({exc})"
    except DnsNoSuchDomain:
        records = []
    dkim_records = [text for text in records if "p=" in text]
    if not dkim_records:
        return EXIT_FAILED, "MISSING: no DKIM record; publish:\n  " + key.zone_line()
    if len(dkim_records) > 1:
        return EXIT_FAILED, f"AMBIGUOUS: {len(dkim_records)} DKIM records at one name"
    problem = record_matches(key, dkim_records[0])
    if problem:
        return EXIT_FAILED, f"MISMATCH: {problem}; publish:\n  " + key.zone_line()
    return EXIT_OK, "OK, the published record carries this key"
