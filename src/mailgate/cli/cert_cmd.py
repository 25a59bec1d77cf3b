"""`mailgate cert request|selfsigned|show`: a key and CSR for a CA, a self-signed certificate for
tests, and what a certificate file holds (SPEC §5).

Owns: the arguments, writing files (never overwriting one without --force; private keys mode
0600), the output and the exit codes. Must not: build keys or parse certificates (tools/certs.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from mailgate.tools.options import CERT_KEY_TYPES, SELF_SIGNED_DAYS

if TYPE_CHECKING:
    from mailgate.tools.certs import CertificateInfo

EPILOG = """examples:
  mailgate cert request --cn mx.example.com --san mail.example.com
      writes mx.example.com.key (mode 0600) and mx.example.com.csr; send the CSR to your CA
  mailgate cert selfsigned --cn mx.test --san localhost --san 127.0.0.1 --days 30
      writes mx.test.key and mx.test.pem, for tests and labs (no client trusts it)
  mailgate cert show /etc/mailgate/cert.pem --host mx.example.com
      subject, issuer, names, expiry, and whether the names cover --host

exit codes: 0 success (show: valid now and, with --host, matching), 1 show: expired, not yet valid
  or not matching --host, 2 usage error (bad arguments, unreadable file, file exists)"""


def register(commands: argparse._SubParsersAction) -> None:
    cert = commands.add_parser(
        "cert", help="make a key and CSR, a self-signed certificate, or show a certificate",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = cert.add_subparsers(dest="cert_command", metavar="ACTION")
    for name, helptext in (("request", "a private key and a CSR to send to a CA"),
                           ("selfsigned", "a private key and a self-signed certificate (tests)")):
        action = sub.add_parser(name, help=helptext, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        action.add_argument("--cn", required=True, help="common name: the host name clients connect to")
        action.add_argument("--san", action="append", default=[], metavar="NAME",
                            help="another DNS name or IP address (repeatable); the CN is always included")
        action.add_argument("--key-type", choices=CERT_KEY_TYPES, default="ec", help="ec (P-256, default) or rsa (2048)")
        action.add_argument("--out-dir", default=".",
                            help="directory for the files, created (mode 0750) if missing (default: current)")
        action.add_argument("--force", action="store_true", help="overwrite existing files")
        if name == "selfsigned":
            action.add_argument("--days", type=int, default=SELF_SIGNED_DAYS,
                                help=f"validity in days (default {SELF_SIGNED_DAYS})")
        action.set_defaults(handler=make_command)
    show = sub.add_parser("show", help="subject, names and expiry of a certificate file (PEM or DER)",
                          epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("file")
    show.add_argument("--host", help="also check that the certificate names HOST")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=show_command)
    cert.set_defaults(handler=lambda args: cert.print_help() or 2)


def _write(path: Path, data: bytes, *, private: bool, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    descriptor = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def make_command(args: argparse.Namespace) -> int:
    from mailgate.tools.certs import certificate_pem, csr_pem, key_pem, make_csr, make_self_signed, new_private_key

    selfsigned = args.cert_command == "selfsigned"
    if selfsigned and not 0 < args.days <= 3650:
        print("mailgate cert: --days must be 1 to 3650", file=sys.stderr)
        return 2
    base = Path(args.out_dir) / args.cn.strip().lstrip("*.").rstrip(".")
    key_path = base.with_name(base.name + ".key")
    out_path = base.with_name(base.name + (".pem" if selfsigned else ".csr"))
    existing = [str(path) for path in (key_path, out_path) if path.exists()]
    if existing and not args.force:
        print(f"mailgate cert: {', '.join(existing)} exists (use --force to overwrite)", file=sys.stderr)
        return 2
    try:
        key = new_private_key(args.key_type)
        Path(args.out_dir).mkdir(mode=0o750, parents=True, exist_ok=True)
        if selfsigned:
            document = certificate_pem(make_self_signed(key, args.cn, args.san, args.days))
        else:
            document = csr_pem(make_csr(key, args.cn, args.san))
        _write(key_path, key_pem(key), private=True, force=args.force)
        _write(out_path, document, private=False, force=args.force)
    except FileExistsError as exc:
        print(f"mailgate cert: {exc.filename} exists (use --force to overwrite)", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"mailgate cert: {exc}", file=sys.stderr)
        return 2
    print(f"private key: {key_path} (mode 0600, keep it secret)")
    print(f"{'certificate' if selfsigned else 'CSR'}: {out_path}")
    if not selfsigned:
        print("send the CSR to your CA; install its certificate as cert_file and the key as key_file")
        return 0
    print("for each [[listener]] that offers TLS:")
    print(f'  cert_file = "{out_path.resolve()}"')
    print(f'  key_file = "{key_path.resolve()}"')
    print("the server reads the key again on reload, as its service user: "
          f"chgrp mailgate {key_path.resolve()} && chmod 0640 {key_path.resolve()}")
    return 0


def show_command(args: argparse.Namespace) -> int:
    from mailgate.tools.certs import describe, load_certificates

    try:
        certificates = load_certificates(Path(args.file).read_bytes())
    except OSError as exc:
        print(f"mailgate cert: {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"mailgate cert: {args.file}: not a PEM or DER certificate ({exc})", file=sys.stderr)
        return 2
    infos = [describe(cert, args.host or "") for cert in certificates]
    if args.json:
        print(json.dumps([asdict(info) for info in infos], indent=2))
    else:
        print("\n\n".join(render(info, index, len(infos)) for index, info in enumerate(infos)))
    leaf = infos[0]
    return 1 if leaf.expired or leaf.name_matches is False else 0


def render(info: CertificateInfo, index: int = 0, total: int = 1) -> str:
    title = f"certificate {index + 1} of {total}" if total > 1 else "certificate"
    state = "EXPIRED or not yet valid" if info.expired else f"valid, {info.days_left} days left"
    lines = [
        f"{title}",
        f"  subject:     {info.subject}",
        f"  issuer:      {info.issuer}" + ("  (self-signed)" if info.self_signed else ""),
        f"  DNS names:   {', '.join(info.dns_names) or '(none)'}",
        f"  IP addresses: {', '.join(info.ip_addresses) or '(none)'}",
        f"  valid from:  {info.not_before}",
        f"  valid until: {info.not_after} ({state})",
        f"  serial:      {info.serial}",
        f"  SHA-256:     {info.fingerprint_sha256}",
    ]
    if info.name_matches is not None:
        lines.append(f"  host name:   {info.name_checked} {'matches' if info.name_matches else 'does NOT match'}")
    return "\n".join(lines)
