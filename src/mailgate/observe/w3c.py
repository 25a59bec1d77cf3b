"""The W3C extended log format, field for field as the IIS SMTP service writes it.

Owns: the field list (the 21 fields of IIS SMTP's "W3C Extended Log File Format" with every
field selected), the directive lines written at the top of each file (#Software, #Version,
#Date, #Fields; W3C Working Draft WD-logfile-960323), turning one command record into one line,
and reading a log back into its fields (for tests and tools). The IIS file name (exYYMMDD.log)
is made by translog.py with writer.DatedNaming.
Must not: open files, rotate or decide which commands are logged (writer.py, translog.py).

Conventions copied from IIS, so existing IIS log analysers read our files unchanged:
- `date` and `time` are UTC (W3C draft: "all times are GMT"); files roll at UTC midnight.
- `cs-username` holds the client's HELO/EHLO name, not an account (IIS SMTP does the same).
- `cs-uri-query` is the command argument with its leading space, every space written as `+`
  (`MAIL +FROM:<a@example.com>`); an empty field is `-`; `sc-win32-status` is 0.
- `cs-version` is `SMTP`; the HTTP-only fields `cs-host`, `cs(User-Agent)`, `cs(Cookie)` and
  `cs(Referer)` are always `-`.
Beyond IIS: control characters and `%` are percent-encoded so that a hostile argument can never
start a new line or forge a field (log injection), and a field is cut at MAX_FIELD characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone

from mailgate.observe import stamps

FIELDS: tuple[str, ...] = (
    "date", "time", "c-ip", "cs-username", "s-sitename", "s-computername", "s-ip", "s-port",
    "cs-method", "cs-uri-stem", "cs-uri-query", "sc-status", "sc-win32-status", "sc-bytes",
    "cs-bytes", "time-taken", "cs-version", "cs-host", "cs(User-Agent)", "cs(Cookie)",
    "cs(Referer)",
)
EMPTY = "-"
PROTOCOL_VERSION = "SMTP"
# RFC 5321 §4.5.3.1.4 limits a command line to 512 octets; extensions (RFC 1869 §4.1.2) add to
# it. Twice the longest legitimate argument is plenty for a log and bounds a hostile one.
MAX_FIELD = 1024

_UNSAFE = re.compile(r"[\x00-\x1f\x7f%]")


def header(when: float, software: str) -> str:
    """The directive lines IIS writes when it opens a log file (also after every restart)."""
    stamp = datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"#Software: {field_value(software, spaces='keep')}\r\n"
        "#Version: 1.0\r\n"
        f"#Date: {stamp}\r\n"
        f"#Fields: {' '.join(FIELDS)}\r\n"
    )


def field_value(value: object, *, spaces: str = "plus") -> str:
    """One field: `-` when empty, spaces as `+` (IIS), control characters and % encoded."""
    if value is None:
        return EMPTY
    text = str(value)
    if not text:
        return EMPTY
    text = _UNSAFE.sub(lambda match: f"%{ord(match.group()):02X}", text[:MAX_FIELD])
    if spaces == "plus":
        text = text.replace(" ", "+")
    return text


def _record_field(value: object) -> str:
    """`field_value(value)`, without its work for the values most fields hold: numbers, and text
    that is printable, short, and has no space or % (nothing to encode)."""
    if type(value) is int:
        return str(value)
    if type(value) is str and value and len(value) <= MAX_FIELD and value.isprintable() and " " not in value and "%" not in value:
        return value
    return field_value(value)


def query_value(argument: str) -> str:
    """cs-uri-query as IIS writes it: the argument with its leading space, so `+FROM:<...>`."""
    return field_value(" " + argument) if argument else EMPTY


# What line() writes per field after date and time: a fixed text, the query as shaped, or a value.
_FIXED = {"sc-win32-status": "0", "cs-version": PROTOCOL_VERSION}
_QUERY = "cs-uri-query"


def line(record: Mapping[str, object]) -> str:
    """One log line from a record keyed by field name; `when` (epoch seconds) gives date/time.

    Fields the record lacks are written `-`; `date` and `time` come from `when`.
    """
    second = stamps.texts(float(record["when"]))  # type: ignore[arg-type]
    out = [second.w3c_date, second.w3c_time]
    get = record.get
    for name in FIELDS[2:]:
        fixed = _FIXED.get(name)
        if fixed is not None:
            out.append(fixed)
        elif name == _QUERY:
            out.append(str(get(name) or EMPTY))  # already shaped by query_value()
        else:
            out.append(_record_field(get(name)))
    return " ".join(out) + "\r\n"


def parse(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """Read a W3C log: the #Fields lists seen and one dict per data line, keyed by field name.

    A #Fields directive applies to the lines after it (W3C draft §2.1.1), so files appended to
    after a restart, and files of other IIS field selections, read correctly.
    """
    fields: list[str] = []
    seen_fields: list[str] = []
    rows: list[dict[str, str]] = []
    for raw in text.splitlines():
        if raw.startswith("#Fields:"):
            fields = raw[len("#Fields:"):].split()
            seen_fields = fields
            continue
        if not raw or raw.startswith("#"):
            continue
        values = raw.split(" ")
        if len(values) != len(fields):
            raise ValueError(f"line has {len(values)} fields, #Fields names {len(fields)}: {raw!r}")
        rows.append(dict(zip(fields, values)))
    return seen_fields, rows
