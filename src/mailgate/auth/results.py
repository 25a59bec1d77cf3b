"""The Authentication-Results header field (RFC 8601): writing ours, removing forged copies.

Owns: the field's text from the check results (one resinfo per SPF identity, per DKIM signature,
for DMARC and ARC, with the properties RFC 8601 §2.7 and RFC 7489 §11.2 name), folding it, and
removing from a message every Authentication-Results field that claims our authserv-id (RFC 8601
§5: a receiver must not trust such a field arriving from outside). Must not: run checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mailgate.auth.dkim_verify import DkimResult
from mailgate.auth.dmarc import DmarcResult
from mailgate.auth.headers import head_of

HEADER = "Authentication-Results"
_UNSAFE = re.compile(r"[^\x21-\x7e]|[;()\"\\]")


def _value(text: str) -> str:
    """A property value as a token, or quoted when it is not one (RFC 8601 §2.2, RFC 2045 token)."""
    if text and not _UNSAFE.search(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    cleaned = re.sub(r"[()\\\r\n]", " ", text).strip()
    return f" ({cleaned})" if cleaned else ""


def spf_resinfo(result: str, identity: str, subject: str, explanation: str = "") -> str:
    prop = "smtp.mailfrom" if identity == "mailfrom" else "smtp.helo"
    return f"spf={result}{_comment(explanation if result != 'pass' else '')} {prop}={_value(subject)}"


def dkim_resinfo(result: DkimResult) -> str:
    if not result.domain:
        return f"dkim={result.result}{_comment(result.reason)}"
    parts = [f"dkim={result.result}{_comment(result.reason)}", f"header.d={_value(result.domain)}"]
    if result.selector:
        parts.append(f"header.s={_value(result.selector)}")
    if result.algorithm:
        parts.append(f"header.a={_value(result.algorithm)}")
    if result.b_prefix:
        parts.append(f"header.b={_value(result.b_prefix)}")
    return " ".join(parts)


def dmarc_resinfo(result: DmarcResult, override: str = "") -> str:
    comment = f"p={result.policy} dis={'NONE' if override else result.disposition.upper()}" \
        if result.result != "none" else result.reason
    if override:
        comment = f"{comment}, {override}" if comment else override
    return f"dmarc={result.result}{_comment(comment)} header.from={_value(result.header_from)}"


def arc_resinfo(result: str, instance: int, sealer: str, client_address: str) -> str:
    """RFC 8617 §4.1.4 / RFC 8601: the chain validation status, and the client it came from."""
    comment = f"i={instance} {sealer}".strip() if instance else ""
    return f"arc={result}{_comment(comment)} smtp.remote-ip={_value(client_address)}"


def header_field(authserv_id: str, resinfos: Iterable[str]) -> bytes:
    """`Authentication-Results: id;` then one resinfo per folded line (RFC 8601 §2.2)."""
    items = list(resinfos) or ["none"]
    text = f"{HEADER}: {authserv_id};\r\n\t" + ";\r\n\t".join(items) + "\r\n"
    return text.encode("utf-8", "replace")


def authserv_id_of(value: bytes) -> str:
    """The authserv-id of an Authentication-Results field value (comments and folding ignored)."""
    text = re.sub(r"\([^()]*\)", " ", value.decode("utf-8", "replace"))
    first = text.split(";", 1)[0].split()
    return first[0].strip('"').lower() if first else ""


def remove_ours(message: bytes, authserv_id: str) -> bytes:
    """`message` without the Authentication-Results fields that carry `authserv_id`."""
    head = head_of(message)
    kept, removed = [], False
    for field in re.split(rb"\r\n(?![ \t])", head[:-2]) if head else []:
        name, sep, value = field.partition(b":")
        if sep and name.strip().lower() == HEADER.lower().encode() and authserv_id_of(value) == authserv_id.lower():
            removed = True
            continue
        kept.append(field)
    if not removed:
        return message
    new_head = b"".join(field + b"\r\n" for field in kept)
    return new_head + message[len(head):]
