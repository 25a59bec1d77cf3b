"""Envelope addresses: strict parsing of SMTP paths and the normalised address value.

Owns: the grammar of RFC 5321 §4.1.2 (Path, Mailbox, Local-part, Domain, address-literal), its
RFC 6531 §3.3 extension to UTF-8, the length limits of RFC 5321 §4.5.3.1, source-route removal
(RFC 5321 §4.1.2 and Appendix C: the route is ignored, the final mailbox judged), and domain
normalisation (IDNA 2008 A-labels, lower case) so that policy compares like with like (SPEC R5).
Must not: decide anything about relaying; it only says what an address *is*. The `idna` package
does the IDNA 2008 mapping; the SMTP path grammar has no well-kept library, so it is written here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import idna

# RFC 5321 §4.5.3.1.1-3: local part 64 octets, domain 255 octets, path 256 octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
MAX_LABEL = 63  # RFC 1035 §2.3.4

# RFC 5322 §3.2.3 atext, used by RFC 5321 Atom.
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
# Characters that make a local part route mail further (percent hack, bang path, embedded @).
ROUTING_CHARACTERS = frozenset("%!@")


class AddressError(ValueError):
    """The text is not a valid address; `reason` is short and safe to put in a reply."""


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox `local@domain`.

    `local` is the local part as it goes on the wire (quoted if it needed quotes); `domain` is the
    normalised domain: IDNA A-labels in lower case, or a canonical address literal such as
    `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
    """

    local: str
    domain: str
    literal: bool = False
    had_source_route: bool = False

    @property
    def local_unquoted(self) -> str:
        """The local part with quoting removed: what a downstream MTA would act on."""
        if len(self.local) >= 2 and self.local[0] == '"' and self.local[-1] == '"':
            inner = self.local[1:-1]
            out = []
            escaped = False
            for char in inner:
                if escaped:
                    out.append(char)
                    escaped = False
                elif char == "\\":
                    escaped = True
                else:
                    out.append(char)
            return "".join(out)
        return self.local

    @property
    def has_routing_characters(self) -> bool:
        """True when the local part holds %, ! or @ (percent hack, bang path, quoted @)."""
        return any(char in ROUTING_CHARACTERS for char in self.local_unquoted)

    @property
    def literal_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        if not self.literal:
            return None
        inner = self.domain[1:-1]
        if inner.lower().startswith("ipv6:"):
            inner = inner[5:]
        return ipaddress.ip_address(inner)

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def normalise_domain(text: str) -> str:
    """A domain in A-label form, lower case, no trailing dot; AddressError if malformed."""
    if not text:
        raise AddressError("empty domain")
    if text.endswith("."):
        # RFC 5321 §4.1.2: sub-domains are never empty; a trailing dot is not a Domain.
        raise AddressError("trailing dot in domain")
    if text.isascii():
        ascii_form = text.lower()
    else:
        try:
            ascii_form = idna.encode(text, uts46=True).decode("ascii").lower()
        except idna.IDNAError as exc:
            raise AddressError(f"invalid internationalised domain: {exc}") from None
    if len(ascii_form) > MAX_DOMAIN:
        raise AddressError("domain too long")
    for label in ascii_form.split("."):
        if not label or len(label) > MAX_LABEL:
            raise AddressError("bad domain label")
        if label[0] == "-" or label[-1] == "-" or not set(label) <= _LDH:
            raise AddressError("bad domain label")
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError:
                raise AddressError("invalid A-label") from None
    return ascii_form


def _parse_literal(text: str) -> str:
    """Canonical form of an address literal `[...]` (RFC 5321 §4.1.3)."""
    inner = text[1:-1]
    if "%" in inner:  # ipaddress takes an IPv6 zone ("fe80::1%eth0"); RFC 5321 §4.1.3 has none
        raise AddressError("bad address literal")
    try:
        if inner.lower().startswith("ipv6:"):
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise AddressError("bad address literal") from None


def _check_local_part(local: str, smtputf8: bool) -> None:
    if not local:
        raise AddressError("empty local part")
    if not local.isascii() and not smtputf8:
        raise AddressError("non-ASCII local part without SMTPUTF8")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    if local[0] == '"':
        _check_quoted_string(local)
        return
    for atom in local.split("."):
        if not atom:
            raise AddressError("empty atom in local part")
        for char in atom:
            if char not in _ATEXT and char.isascii():
                raise AddressError("invalid character in local part")


def _check_quoted_string(local: str) -> None:
    # RFC 5321 §4.1.2: qtextSMTP %d32-33 / %d35-91 / %d93-126, quoted-pairSMTP "\" %d32-126.
    if len(local) < 2 or local[-1] != '"':
        raise AddressError("unterminated quoted local part")
    inner = local[1:-1]
    index = 0
    while index < len(inner):
        char = inner[index]
        if char == "\\":
            if index + 1 >= len(inner) or not 32 <= ord(inner[index + 1]) <= 126:
                raise AddressError("bad quoted pair")
            index += 2
            continue
        if char == '"' or (char.isascii() and not 32 <= ord(char) <= 126):
            raise AddressError("invalid character in quoted local part")
        index += 1


def _split_mailbox(text: str) -> tuple[str, str]:
    """Split `local@domain` at the @ that ends the local part (a quoted part may hold @)."""
    if text.startswith('"'):
        index = 1
        while index < len(text):
            if text[index] == "\\":
                index += 2
                continue
            if text[index] == '"':
                break
            index += 1
        else:
            raise AddressError("unterminated quoted local part")
        local, rest = text[: index + 1], text[index + 1 :]
        if not rest.startswith("@"):
            raise AddressError("missing @ after local part")
        return local, rest[1:]
    if text.count("@") != 1:
        raise AddressError("an address holds exactly one @ outside quotes")
    local, domain = text.split("@")
    return local, domain


def parse_mailbox(text: str, *, smtputf8: bool = False) -> Address:
    """Parse `local@domain` (no angle brackets) strictly."""
    local, domain_text = _split_mailbox(text)
    _check_local_part(local, smtputf8)
    if domain_text.startswith("[") and domain_text.endswith("]"):
        return Address(local, _parse_literal(domain_text), literal=True)
    if not domain_text.isascii() and not smtputf8:
        raise AddressError("non-ASCII domain without SMTPUTF8")
    return Address(local, normalise_domain(domain_text))


def _strip_source_route(inner: str) -> tuple[str, bool]:
    """`@a,@b:user@c` -> (`user@c`, True); each route domain must itself be valid."""
    if not inner.startswith("@"):
        return inner, False
    route, colon, mailbox = inner.partition(":")
    if not colon:
        raise AddressError("source route without ':'")
    for hop in route.split(","):
        if not hop.startswith("@") or len(hop) < 2:
            raise AddressError("bad source route")
        if hop[1:].startswith("["):
            _parse_literal(hop[1:])
        else:
            normalise_domain(hop[1:])
    return mailbox, True


def parse_path(text: str, *, allow_null: bool, smtputf8: bool = False) -> tuple[Address | None, str]:
    """Parse a Reverse-path or Forward-path and return it with the parameter text after it.

    `text` is what follows `MAIL FROM:` or `RCPT TO:`. `None` stands for the null path `<>`
    (allowed only when `allow_null`). Raises AddressError for anything not in the grammar.
    """
    text = text.lstrip(" ")
    if text.startswith("<"):
        end = _closing_bracket(text)
        inner, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(" "):
            raise AddressError("garbage after path")
    else:
        # Tolerated: a bare mailbox without brackets, as many scripts send; same strict grammar.
        inner, _, rest = text.partition(" ")
        rest = " " + rest if rest else ""
    if len(inner.encode("utf-8")) + 2 > MAX_PATH:
        raise AddressError("path too long")
    if inner == "":
        if not allow_null:
            raise AddressError("null path not allowed here")
        return None, rest.strip(" ")
    mailbox, had_route = _strip_source_route(inner)
    address = parse_mailbox(mailbox, smtputf8=smtputf8)
    if had_route:
        address = Address(address.local, address.domain, address.literal, had_source_route=True)
    return address, rest.strip(" ")


def _closing_bracket(text: str) -> int:
    in_quotes = False
    index = 1
    while index < len(text):
        char = text[index]
        if in_quotes and char == "\\":
            index += 2
            continue
        if char == '"':
            in_quotes = not in_quotes
        elif char == ">" and not in_quotes:
            return index
        index += 1
    raise AddressError("missing '>'")
