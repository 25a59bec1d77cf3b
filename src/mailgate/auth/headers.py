"""Reading the header section of a message for message authentication.

Owns: splitting a message into its header fields (RFC 5322 §2.2, unfolded for reading only),
finding the From: field and the domains of its mailboxes (RFC 5322 §3.6.2), in the A-label form
the rest of mailgate compares (RFC 5890). Must not: change the message, or decide anything.
"""

from __future__ import annotations

import email.utils
import re

from mailgate.core.address import AddressError, normalise_domain

_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:(.*)$", re.S)


def head_of(message: bytes) -> bytes:
    """The header section with its last CRLF, without the empty line (RFC 5322 §2.1)."""
    if message.startswith(b"\r\n"):
        return b""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[:end + 2]


def fields(head: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, raw value with its folding) for each header field, in order."""
    result: list[tuple[str, bytes]] = []
    for raw in re.split(rb"\r\n(?![ \t])", head):
        match = _FIELD.match(raw)
        if match:
            result.append((match.group(1).decode("ascii").lower(), match.group(2)))
    return result


def from_domains(head: bytes) -> tuple[int, list[str]]:
    """(number of From: fields, the domains of the first field's mailboxes, A-label, lower case).

    A mailbox whose domain cannot be normalised gives "" so that the caller sees it is unusable.
    """
    values = [value for name, value in fields(head) if name == "from"]
    if not values:
        return 0, []
    text = re.sub(r"\r\n[ \t]", " ", values[0].decode("utf-8", "replace"))
    domains = []
    for _, address in email.utils.getaddresses([text]):
        domain = address.rpartition("@")[2] if "@" in address else ""
        try:
            domains.append(normalise_domain(domain) if domain else "")
        except AddressError:
            domains.append("")
    return len(values), domains
