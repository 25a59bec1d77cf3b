"""Coverage-guided fuzzing of the envelope address parser (core/address.py) and of the MAIL and
RCPT argument parser built on it (smtp/commands.py).

Input layout: byte 0 picks the flags (null path allowed, SMTPUTF8, ESMTP, DSN); the rest,
decoded as UTF-8, is the text after `MAIL FROM:` / `RCPT TO:`.

Invariants checked (an AssertionError is a finding):
- the only errors are the documented ones: AddressError (a ValueError) from core/address.py,
  CommandError from smtp/commands.py;
- a parsed address round-trips: `str(address)` parses back to the same local part and domain;
- the domain is ASCII, lower case and already normal (`normalise_domain` leaves it unchanged),
  or a canonical address literal; RFC 5321 §4.5.3.1 lengths hold (local part 64, domain 255,
  label 63 octets); without SMTPUTF8 the address is ASCII (RFC 6531 §3.3);
- the null path comes back only where it is allowed;
- accepting with SMTPUTF8 off implies accepting the same address with it on;
- the MAIL/RCPT parsers refuse exactly what the path parser refuses, with a 5xx reply.
"""

from __future__ import annotations

import re
import sys

import atheris

with atheris.instrument_imports(include=["mailgate"]):
    from mailgate.core.address import (
        MAX_DOMAIN, MAX_LABEL, MAX_LOCAL_PART, Address, AddressError, _parse_literal, normalise_domain,
        parse_mailbox, parse_path,
    )
    from mailgate.smtp.commands import CommandError, parse_mail, parse_rcpt

# RFC 5321 §4.1.3: IPv4-address-literal / "IPv6:" IPv6-addr (hex, colons, dotted quad), no zone.
LITERAL = re.compile(r"\[(?:[0-9.]+|IPv6:[0-9a-f:.]+)\]")


class Finding(AssertionError):
    """An invariant of the address parser does not hold."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise Finding(message)


def check_address(address: Address, smtputf8: bool) -> None:
    local_octets = len(address.local.encode("utf-8"))
    check(0 < local_octets <= MAX_LOCAL_PART, f"local part of {local_octets} octets")
    if address.literal:
        check(LITERAL.fullmatch(address.domain), f"literal {address.domain!r} outside RFC 5321 §4.1.3")
        check(_parse_literal(address.domain) == address.domain, f"literal {address.domain!r} not canonical")
        address.literal_ip  # noqa: B018 (must not raise)
    else:
        domain = address.domain
        check(domain.isascii() and domain == domain.lower(), f"domain {domain!r} not lower-case ASCII")
        check(len(domain) <= MAX_DOMAIN and all(0 < len(label) <= MAX_LABEL for label in domain.split(".")),
              f"domain {domain!r} breaks the RFC 5321 §4.5.3.1 lengths")
        check(normalise_domain(domain) == domain, f"domain {domain!r} is not normal")
    if not smtputf8:
        check(str(address).isascii(), f"non-ASCII {address} without SMTPUTF8")
    again = parse_mailbox(str(address), smtputf8=smtputf8)
    check((again.local, again.domain, again.literal) == (address.local, address.domain, address.literal),
          f"{address} parses back as {again}")
    address.local_unquoted  # noqa: B018 (must not raise)
    address.has_routing_characters  # noqa: B018


def path_result(text: str, allow_null: bool, smtputf8: bool) -> tuple[Address | None, str] | None:
    try:
        return parse_path(text, allow_null=allow_null, smtputf8=smtputf8)
    except AddressError as error:
        check(str(error), "AddressError without a reason")
        return None


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    if not data:
        return
    flags, text = data[0], data[1:].decode("utf-8", "replace")
    allow_null, smtputf8, esmtp, dsn = bool(flags & 1), bool(flags & 2), bool(flags & 4), bool(flags & 8)
    result = path_result(text, allow_null, smtputf8)
    if result is not None:
        address, rest = result
        check(text.rstrip(" ").endswith(rest), "parameters are not the end of the text")
        if address is None:
            check(allow_null, "null path where it is not allowed")
        else:
            check_address(address, smtputf8)
        if not smtputf8:
            wide = path_result(text, allow_null, True)
            check(wide is not None and wide[0] == address, "SMTPUTF8 on refuses what it accepts off")
    try:
        domain = normalise_domain(text)
    except AddressError:
        pass
    else:
        check(normalise_domain(domain) == domain, "normalise_domain is not idempotent")
    try:
        mail = parse_mail(text, esmtp=esmtp, max_message_size=1000, eight_bit_mime=True, smtputf8=True,
                          dsn=dsn, auth=bool(flags & 16))
    except CommandError as error:
        check(error.reply.code >= 500, f"MAIL refused with {error.reply}")
        check(path_result(text, True, True) is None or error.reply.code != 501
              or error.reply.enhanced != "5.1.7", "MAIL refused an address the path parser accepts")
    else:
        check(path_result(text, True, True) is not None, "MAIL accepted an address the path parser refuses")
        if mail.sender is not None:
            check_address(mail.sender, True)
    try:
        recipient = parse_rcpt(text, esmtp=esmtp, smtputf8=smtputf8, dsn=dsn, postmaster_domain="mx.fuzz.test")
    except CommandError as error:
        check(error.reply.code >= 500, f"RCPT refused with {error.reply}")
    else:
        check_address(recipient.address, smtputf8)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
