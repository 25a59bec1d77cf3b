"""`mailgate mx DOMAIN [--probe]`: MX hosts with preference and addresses, optionally probed.

Owns: the arguments (resolver address and port for split DNS and labs), progress on stderr while
probing, the table and the JSON output, and the exit code.
Must not: resolve or speak SMTP itself (tools/mx_probe.py does, with dns/).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Awaitable
from dataclasses import asdict
from typing import TYPE_CHECKING, TypeVar

from mailgate.cli.config_option import add_config_argument, load_config_or_report

if TYPE_CHECKING:
    from mailgate.dns.resolver import DnsPythonResolver
    from mailgate.tools.mx_probe import MxLookup, ProbeResult

T = TypeVar("T")
PROGRESS_AFTER = 1.0  # seconds of silence before a progress line

EPILOG = """examples:
  mailgate mx example.com
  mailgate mx example.com --probe              connect to each host: banner, EHLO, STARTTLS, certificate
  mailgate mx example.com --json
  mailgate mx lab.test --nameserver 127.0.0.1 --dns-port 5353 --probe --port 2525

The probe never sends MAIL: it greets, reads EHLO, starts TLS when offered, and quits.

exit codes: 0 the domain has mail hosts (and, with --probe, every probed host answered),
  1 null MX, no such domain, or a probed host failed, 2 usage error, 3 DNS failed temporarily"""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "mx", help="show a domain's MX hosts; --probe connects to each",
        description="MX records of DOMAIN with preference and addresses, as delivery reads them.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("domain", help="the domain (IDN allowed)")
    parser.add_argument("--probe", action="store_true", help="connect to every address of every host")
    parser.add_argument("--port", type=int, default=25, help="SMTP port to probe (default 25)")
    parser.add_argument("--helo", help="EHLO name for the probe")  # default: this host's name, asked when probing
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per DNS look-up and per reply (default 10)")
    parser.add_argument("--nameserver", action="append", metavar="IP",
                        help="DNS server (repeatable; default: dns.nameservers of the configuration, as "
                             "delivery asks, else /etc/resolv.conf)")
    parser.add_argument("--dns-port", type=int, help="DNS server port (default: dns.port of the configuration)")
    add_config_argument(parser)
    parser.add_argument("--source-address", metavar="IP", help="local address the probe connects from")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=mx_command)


def mx_command(args: argparse.Namespace) -> int:
    import asyncio

    from mailgate.dns.resolver import DnsPythonResolver
    from mailgate.tools.mx_probe import NO_SUCH_DOMAIN, NULL, TEMPORARY, validate_domain

    try:
        domain = validate_domain(args.domain)
    except ValueError as exc:
        print(f"mailgate mx: {exc}", file=sys.stderr)
        return 2
    config = load_config_or_report(args.config, "mx")
    if config is None:
        return 2
    nameservers = args.nameserver or list(config.dns.nameservers) or None
    dns_port = args.dns_port if args.dns_port is not None else config.dns.port
    if not 0 < args.port < 65536 or not 0 < dns_port < 65536 or args.timeout <= 0:
        print("mailgate mx: ports must be 1-65535 and --timeout positive", file=sys.stderr)
        return 2
    resolver = DnsPythonResolver(nameservers, dns_port, args.timeout)
    report, probes = asyncio.run(_run(resolver, domain, args))
    if args.json:
        data = {"lookup": asdict(report), "probes": [asdict(result) for result in probes]}
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(render_lookup(report))
        for result in probes:
            print()
            print(render_probe(result))
    if report.outcome == TEMPORARY:
        return 3
    if report.outcome in (NULL, NO_SUCH_DOMAIN) or any(result.error for result in probes):
        return 1
    return 0


async def _run(resolver: DnsPythonResolver, domain: str, args: argparse.Namespace) -> tuple[MxLookup, list[ProbeResult]]:
    from mailgate.tools.mx_probe import lookup, probe, probe_targets

    report = await _after_a_second_say(
        lookup(resolver, domain),
        f"looking up MX of {domain} at {resolver.describe_servers()} (time-out {args.timeout:g} s per look-up) ...",
    )
    probes: list[ProbeResult] = []
    if args.probe:
        targets = probe_targets(report)
        helo = args.helo if args.helo is not None else socket.getfqdn() or "localhost"
        for index, (host, address) in enumerate(targets, start=1):
            print(f"[{index}/{len(targets)}] probing {host} ({address}) port {args.port} ...",
                  file=sys.stderr, flush=True)
            probes.append(await probe(host, address, args.port, helo=helo,
                                      timeout=args.timeout, source_address=args.source_address))
    return report, probes


async def _after_a_second_say(work: Awaitable[T], message: str) -> T:
    """`work`'s result; `message` on stderr if it takes longer than PROGRESS_AFTER (docs/tools.md:
    commands that take more than a second print progress)."""
    import asyncio

    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=PROGRESS_AFTER)
    if not done:
        print(message, file=sys.stderr, flush=True)
    return await task


def render_lookup(report: MxLookup) -> str:
    lines = [f"{report.domain}: {report.explanation}"]
    if report.error:
        lines.append(f"  ({report.error})")
    if report.records:
        lines.append("")
        lines.append("  MX records as published:")
        lines.extend(f"    {preference:>5}  {name}" for preference, name in report.records)
    if report.hosts:
        lines.append("")
        lines.append("  PREF  HOST                                  ADDRESSES")
        for host in report.hosts:
            addresses = ", ".join(host.addresses) or "(no address now: look-up failed temporarily)"
            implicit = "  (implicit MX)" if host.implicit else ""
            lines.append(f"  {host.preference:>4}  {host.name:<36}  {addresses}{implicit}")
        skipped = {name for _, name in report.records} - {host.name for host in report.hosts} - {"."}
        for name in sorted(skipped):
            lines.append(f"        {name:<36}  (skipped: the name does not exist or has no address)")
    return "\n".join(lines)


def render_probe(result: ProbeResult) -> str:
    lines = [f"{result.host} [{result.address}]:{result.port}"]
    if result.banner:
        lines.append(f"  banner:    {result.banner}")
    if result.extensions:
        lines.append(f"  EHLO:      {result.ehlo_name}: {', '.join(result.extensions)}")
    if result.extensions:
        lines.append(f"  STARTTLS:  {'offered' if result.starttls_offered else 'NOT offered'}"
                     + (f", {result.tls}" if result.tls else ""))
    cert = result.certificate
    if cert is not None:
        match = "matches" if cert.name_matches else "does NOT match"
        expiry = "EXPIRED" if cert.expired else f"{cert.days_left} days left"
        lines.append(f"  subject:   {cert.subject}")
        lines.append(f"  issuer:    {cert.issuer}" + ("  (self-signed)" if cert.self_signed else ""))
        lines.append(f"  names:     {', '.join(cert.dns_names + cert.ip_addresses) or '(none)'}")
        lines.append(f"  expires:   {cert.not_after} ({expiry})")
        lines.append(f"  host name: {match} {cert.name_checked}")
    if result.error:
        lines.append(f"  error:     {result.error}")
    return "\n".join(lines)
