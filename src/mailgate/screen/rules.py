"""Screening rules: the model, its parsing from configuration tables, and matching.

Owns: `Rule` and `Match` (one `[[screen_rule]]` each), `parse_rules` (validated tables in, every
error out with its key path), and the match predicates at three levels: the envelope (no
message needed), the root header section, and each MIME leaf (names, types, size, zip content,
decoded text). A rule matches when every match key it gives matches; within one key's list, any
entry will do; `match = "any"` makes one matching kind of key enough. The part-level keys
(filename, extension, mime_type, sniffed_type, min_size) must all hold for the same part.
Regular expressions are compiled with the `regex` module, whose searches take a time-out: each
matcher takes `timeout` (seconds, None: unbounded) and lets `TimeoutError` out, so a catastrophic
backtrack in an admin's expression stops, and the screener counts the rule as one that could have
matched (bounds.py). `part_exposure`, `BODY_EXPOSURE` and `HEADER_EXPOSURE` say which blind
spots of a walk each kind of key cannot see past.
Must not: read messages (mime.py does) or decide between several matching rules (screener.py).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any

import regex

from mailgate.core.address import AddressError, normalise_domain, parse_mailbox
from mailgate.screen.bounds import HEADERS, PARTS, TEXT, ZIP_KINDS, ZIP_NAMES
from mailgate.screen.leaf import LeafPart, decoded
from mailgate.screen.sniff import known_names

PART_KEYS = ("filename", "extension", "mime_type", "sniffed_type", "min_size")
_DEFAULT_TEXT = {
    "reject": "Message refused by policy",
    "tempfail": "Message deferred by policy, try again later",
    "strip": "attachment not allowed",
    "quarantine": "held for review",
    "tag": "tagged",
}
NULL_SENDER = "<>"  # a `sender` entry matching the null reverse-path (RFC 5321 §4.5.5)
# Unicode bidi controls change how a name displays, never what Windows runs: matched without them.
_BIDI_CONTROLS = dict.fromkeys(map(ord, "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


class ScreenConfigError(ValueError):
    """The screening configuration is invalid; `errors` lists each problem with its key path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class ScreenContext:
    """What the session knows about the transaction when data ends."""

    direction: str  # "inbound" | "outbound"
    sender: str  # "" for the null reverse-path
    recipients: list[str]
    client_address: str
    helo: str
    auth_user: str | None = None


@dataclass(frozen=True)
class Match:
    filename: tuple[str, ...] = ()  # glob patterns, lower case
    extension: tuple[str, ...] = ()  # lower case, without the leading dot ("exe", "tar.gz")
    mime_type: tuple[str, ...] = ()  # declared type globs ("application/x-msdownload", "video/*")
    sniffed_type: tuple[str, ...] = ()  # sniff.py kinds or categories ("executable", "zip")
    min_size: int | None = None  # decoded octets
    in_zip: bool = False  # filename, extension and sniffed_type also see names inside zips
    subject: tuple[regex.Pattern[str], ...] = ()
    header: tuple[tuple[str, regex.Pattern[str]], ...] = ()
    body: tuple[regex.Pattern[str], ...] = ()
    sender: tuple[str, ...] = ()
    sender_domain: tuple[str, ...] = ()  # "example.com" exactly, ".example.com" its subdomains
    recipient: tuple[str, ...] = ()
    client: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    helo: tuple[regex.Pattern[str], ...] = ()

    @property
    def has_part_keys(self) -> bool:
        return bool(self.filename or self.extension or self.mime_type or self.sniffed_type
                    or self.min_size is not None)

    @property
    def has_header_keys(self) -> bool:
        return bool(self.subject or self.header)

    @property
    def needs_message(self) -> bool:
        return self.has_part_keys or self.has_header_keys or bool(self.body)

    @property
    def part_exposure(self) -> frozenset[str]:
        """The blind spots (bounds.py) that could hide a part these part keys look for."""
        seen = {PARTS}
        if self.in_zip and (self.filename or self.extension):
            seen.add(ZIP_NAMES)
        if self.in_zip and self.sniffed_type:
            seen.add(ZIP_KINDS)
        return frozenset(seen)


BODY_EXPOSURE = frozenset({PARTS, TEXT})  # what could hide text a body key looks for
HEADER_EXPOSURE = frozenset({HEADERS})


@dataclass(frozen=True)
class Rule:
    name: str
    direction: str
    action: str
    match: Match
    text: str  # "": a standard text naming the action
    tag_header: str
    match_any: bool  # `match = "any"`: one matching kind of key is enough

    def applies_to(self, direction: str) -> bool:
        return self.direction in (direction, "both")

    def describe(self) -> str:
        return self.text or _DEFAULT_TEXT[self.action]


# --- Matching ----------------------------------------------------------------------------------

def _normal_address(text: str) -> str:
    if text in ("", NULL_SENDER):
        return ""
    try:
        address = parse_mailbox(text.strip("<>"), smtputf8=True)
    except AddressError:
        return text.strip("<>").lower()
    return f"{address.local_unquoted.lower()}@{address.domain}"


def _domain_matches(domain: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("."):
            if domain.endswith(pattern):
                return True
        elif domain == pattern:
            return True
    return False


def _client_in(client: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(client.strip("[]").split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == network.version and address in network for network in networks)


def envelope_results(match: Match, ctx: ScreenContext, timeout: float | None = None) -> list[bool]:
    """One result per envelope key `match` gives, in order (empty when it gives none)."""
    sender = _normal_address(ctx.sender)
    results = []
    if match.sender:
        results.append(sender in match.sender)
    if match.sender_domain:
        results.append(_domain_matches(sender.rpartition("@")[2], match.sender_domain))
    if match.recipient:
        results.append(any(_normal_address(r) in match.recipient for r in ctx.recipients))
    if match.client:
        results.append(_client_in(ctx.client_address, match.client))
    if match.helo:
        results.append(any(pattern.search(ctx.helo, timeout=timeout) for pattern in match.helo))
    return results


def envelope_matches(match: Match, ctx: ScreenContext, timeout: float | None = None) -> bool:
    """Every envelope key of `match` (True when it gives none)."""
    return all(envelope_results(match, ctx, timeout))


def headers_match(match: Match, headers: Message, timeout: float | None = None) -> bool:
    """The subject and header keys of `match` against the root header section (decoded)."""
    if match.subject:
        subject = _header_text(headers, "subject")
        if not any(pattern.search(value, timeout=timeout) for value in subject for pattern in match.subject):
            return False
    if match.header:
        if not any(pattern.search(value, timeout=timeout) for name, pattern in match.header
                   for value in _header_text(headers, name)):
            return False
    return True


def _header_text(headers: Message, name: str) -> list[str]:
    return [decoded(value) for value in headers.get_all(name) or []]


def body_matches(match: Match, part: LeafPart, timeout: float | None = None) -> bool:
    return part.text is not None and any(pattern.search(part.text, timeout=timeout) for pattern in match.body)


def normal_name(name: str) -> str:
    """How a file name is compared: bidi controls dropped, trailing dots and spaces dropped (Windows
    ignores them when it runs the file), lower case."""
    return name.translate(_BIDI_CONTROLS).strip().rstrip(". ").lower()


def part_matches(match: Match, part: LeafPart) -> list[str]:
    """What made the part-level keys hold (names, for the log and the strip notice); [] if not."""
    names = [normal_name(name) for name in part.names]
    kinds = {part.sniffed.kind: part.sniffed} if part.sniffed is not None else {}
    zip_names: list[str] = []
    if match.in_zip and part.zip is not None:
        zip_names = [normal_name(name.rsplit("/", 1)[-1]) for name in part.zip.names]
    if match.min_size is not None and part.size < match.min_size:
        return []
    if match.mime_type and not any(fnmatch.fnmatchcase(part.content_type, t) for t in match.mime_type):
        return []
    found: list[str] = []
    if match.filename or match.extension:
        hits = [name for name in names + zip_names if _name_matches(match, name)]
        if not hits:
            return []
        found += hits
    if match.sniffed_type:
        sniffed_hits = [kind for kind, sniffed in kinds.items()
                        if any(sniffed.matches(wanted) for wanted in match.sniffed_type)]
        if match.in_zip and part.zip is not None:
            sniffed_hits += _zip_kind_hits(match, part)
        if not sniffed_hits:
            return []
        found += [f"content: {kind}" for kind in sniffed_hits]
    return found or (names[:1] or [part.content_type])


def _zip_kind_hits(match: Match, part: LeafPart) -> list[str]:
    assert part.zip is not None
    return [f"{sniffed.kind} in zip ({name})" for name, sniffed in part.zip.kinds.items()
            if any(sniffed.matches(wanted) for wanted in match.sniffed_type)]


def _name_matches(match: Match, name: str) -> bool:
    if match.filename and not any(fnmatch.fnmatchcase(name, pattern) for pattern in match.filename):
        return False
    return not match.extension or any(name.endswith("." + extension) for extension in match.extension)


# --- Parsing -----------------------------------------------------------------------------------

_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 §3.6.8 ftext: printable but ":"


def parse_rules(tables: Sequence[Any], where: str = "screen_rule") -> list[Rule]:
    """Rules from `[[screen_rule]]` tables the configuration loader validated against the schema
    (config/schema.py declares every key, its type, choices and default). What no schema type
    can check is checked here: regular expressions, sniffed type names, `Name: regex` entries,
    addresses and domains, a rule without a match key, strip without a part key, duplicate names.
    Raises ScreenConfigError naming every problem with its key path."""
    errors: list[str] = []
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, table in enumerate(tables):
        path = f"{where}[{index}]"
        rule = _parse_rule(table, path, errors)
        if rule is None:
            continue
        if rule.name in seen:
            errors.append(f"{path}.name: duplicate rule name {rule.name!r}")
        seen.add(rule.name)
        rules.append(rule)
    if errors:
        raise ScreenConfigError(errors)
    return rules


class _Fields:
    """Conversions of one validated table that record errors instead of raising, so all are reported."""

    def __init__(self, table: Any, path: str, errors: list[str]) -> None:
        self.table, self.path, self.errors = table, path, errors

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{self.path}.{key}: {message}")

    def strings(self, key: str) -> list[str]:
        return list(getattr(self.table, key))

    def regexes(self, key: str, values: list[str] | None = None) -> tuple[regex.Pattern[str], ...]:
        compiled = []
        for value in self.strings(key) if values is None else values:
            try:
                compiled.append(regex.compile(value, regex.IGNORECASE))  # keywords ignore case
            except regex.error as exc:
                self.error(key, f"bad regular expression {value!r}: {exc}")
        return tuple(compiled)

    def converted(self, key: str, convert: Any) -> tuple[Any, ...]:
        out = []
        for value in self.strings(key):
            try:
                out.append(convert(value))
            except (ValueError, AddressError) as exc:
                self.error(key, f"{value!r}: {exc}")
        return tuple(out)


def _parse_rule(table: Any, path: str, errors: list[str]) -> Rule | None:
    fields = _Fields(table, path, errors)
    before = len(errors)
    if not _HEADER_NAME.fullmatch(table.tag_header):
        fields.error("tag_header", "is not a valid header field name (RFC 5322 §3.6.8)")
    match = _parse_match(fields)
    if not any(getattr(match, key.name) for key in dataclasses.fields(Match) if key.name != "in_zip"):
        fields.error("name", "the rule has no match key, it would match every message")
    if table.action == "strip" and not match.has_part_keys:
        fields.error("action", "strip needs a part key: " + ", ".join(PART_KEYS))
    if table.action == "strip" and table.match == "any":
        fields.error("match", "strip needs match = \"all\": it removes the parts its part keys found")
    if len(errors) > before:
        return None
    return Rule(table.name, table.direction, table.action, match, table.text, table.tag_header,
                match_any=table.match == "any")


def _parse_match(fields: _Fields) -> Match:
    table = fields.table
    sniffed = tuple(value.lower() for value in fields.strings("sniffed_type"))
    unknown = sorted(set(sniffed) - known_names())
    if unknown:
        fields.error("sniffed_type", f"unknown {unknown}; known: {', '.join(sorted(known_names()))}")
    headers = []
    for entry in fields.strings("header"):
        header_name, colon, expression = entry.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(header_name.strip()):
            fields.error("header", f"{entry!r} is not 'Name: regex'")
            continue
        for pattern in fields.regexes("header", [expression.strip()]):
            headers.append((header_name.strip().lower(), pattern))
    return Match(
        filename=tuple(value.lower() for value in fields.strings("filename")),
        extension=tuple(value.lower().lstrip(".") for value in fields.strings("extension")),
        mime_type=tuple(value.lower() for value in fields.strings("mime_type")),
        sniffed_type=sniffed,
        min_size=table.min_size or None,  # 0: any size
        in_zip=table.in_zip,
        subject=fields.regexes("subject"),
        header=tuple(headers),
        body=fields.regexes("body"),
        sender=fields.converted("sender", _config_address),
        sender_domain=fields.converted("sender_domain", _config_domain),
        recipient=fields.converted("recipient", _config_address),
        client=tuple(table.client),
        helo=fields.regexes("helo"),
    )


def _config_address(value: str) -> str:
    if value == NULL_SENDER:
        return ""
    address = parse_mailbox(value.strip("<>"), smtputf8=True)
    return f"{address.local_unquoted.lower()}@{address.domain}"


def _config_domain(value: str) -> str:
    if value.startswith("."):
        return "." + normalise_domain(value[1:])
    return normalise_domain(value)
