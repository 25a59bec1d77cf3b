"""Rewriting a screened message: strip (parts replaced by a notice) and subject rewriting.

Owns: `plan_removals` (which byte ranges go: a matched leaf, or the nearest enclosing entity
that sits in a multipart when the leaf is the body of a message/rfc822, or the whole body when
the root itself matched), `write_stripped` (the new message, streamed to a sink: the original
bytes copied verbatim except each removed range, which becomes a short text/plain notice part
naming what was removed and why, plus an `X-Mailgate-Stripped:` header at the top), and
`write_with_subject` (rspamd's "rewrite subject").
Must not: decide what to remove (the screener does) or keep the message in memory: it copies
from `open_message()` in `COPY_CHUNK` pieces.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from email.header import Header
from typing import BinaryIO

from mailgate.screen.mime import Entity

COPY_CHUNK = 64 * 1024
STRIPPED_HEADER = "X-Mailgate-Stripped"
MAX_HEADER_LINE = 78  # RFC 5322 §2.1.1: lines SHOULD be no more than 78 characters
# Fields describing the root's body; replaced when the whole body is (RFC 2045 §3).
_BODY_FIELDS = (b"content-type", b"content-transfer-encoding", b"content-disposition")

Sink = Callable[[bytes], None]


@dataclass(frozen=True)
class Removal:
    """One byte range to replace with a notice; `names` and `reason` go into the notice."""

    path: str
    start: int
    end: int
    names: tuple[str, ...]
    reason: str

    @property
    def is_root(self) -> bool:
        return self.path == ""


def plan_removals(
    matched: dict[str, tuple[tuple[str, ...], str]], entities: dict[str, Entity],
) -> list[Removal]:
    """Ranges for the matched leaves (`path -> (names, reason)`), outermost first, in order.

    A leaf that is not a child of a multipart (the root, or the body of a message/rfc822) cannot
    be cut out alone, so its nearest ancestor that is one is removed instead (or the root's body).
    """
    targets: dict[str, tuple[list[str], list[str]]] = {}
    for path, (names, reason) in matched.items():
        target = path
        while target and not entities[target].in_multipart:
            target = target.rpartition(".")[0]
        names_list, reasons = targets.setdefault(target, ([], []))
        names_list.extend(name for name in names if name not in names_list)
        if reason not in reasons:
            reasons.append(reason)
    removals = []
    for path in sorted(targets, key=lambda p: entities[p].start):
        if any(_inside(path, other) for other in targets if other != path):
            continue  # an ancestor goes already
        names, reasons = targets[path]
        entity = entities[path]
        removals.append(Removal(path, entity.start, entity.end, tuple(names), "; ".join(reasons)))
    return removals


def _inside(path: str, ancestor: str) -> bool:
    return ancestor == "" or path.startswith(ancestor + ".")


def _one_line(text: str) -> str:
    """`text` without control characters or line breaks (a part's name is the sender's: with
    CR LF, or a line break of str.splitlines such as \x1e, it would add lines to our header or a
    delimiter line to the notice, RFC 5322 §2.2, RFC 2046 §5.1.1)."""
    return " ".join("".join(char if char.isprintable() else " " for char in text).split())


def notice_text(removal: Removal) -> str:
    what = ", ".join(f'"{_one_line(name)}"' for name in removal.names) or "a part"
    return f"mailgate removed {what} from this message: {_one_line(removal.reason)}"


def stripped_header_value(removals: list[Removal]) -> str:
    return "; ".join(f"{', '.join(map(_one_line, r.names)) or 'part ' + r.path} ({_one_line(r.reason)})"
                     for r in removals)


def _header_line(name: str, value: str, ending: bytes) -> bytes:
    """`Name: value` folded, RFC 2047-encoded when not ASCII (RFC 2047 §2, RFC 5322 §2.2.3)."""
    charset = "us-ascii" if value.isascii() else "utf-8"
    encoded = Header(value, charset, header_name=name, maxlinelen=MAX_HEADER_LINE).encode(
        linesep=ending.decode()
    )
    return f"{name}: {encoded}".encode("ascii") + ending


def _notice_entity(text: str, ending: bytes) -> bytes:
    """Header section and body of a text/plain notice, without the final line break."""
    data = text.encode("utf-8")
    if data.isascii():
        encoding, body = b"7bit", data
    else:
        encoding = b"base64"
        body = ending.join(base64.encodebytes(data).splitlines())
    return (
        b'Content-Type: text/plain; charset="utf-8"' + ending
        + b"Content-Transfer-Encoding: " + encoding + ending
        + b"Content-Disposition: inline" + ending + ending + body
    )


def _copy(file: BinaryIO, count: int | None, sink: Sink) -> None:
    """Copy `count` bytes (None: to the end) from file to sink in bounded chunks."""
    while count is None or count > 0:
        chunk = file.read(COPY_CHUNK if count is None else min(COPY_CHUNK, count))
        if not chunk:
            return
        sink(chunk)
        if count is not None:
            count -= len(chunk)


def _root_header_fields(file: BinaryIO) -> tuple[list[bytes], int]:
    """The root header section as whole fields (folded lines joined) and the body's offset."""
    fields: list[bytes] = []
    offset = 0
    while True:
        line = file.readline(COPY_CHUNK)
        offset += len(line)
        if not line or line in (b"\r\n", b"\n"):
            return fields, offset
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line  # RFC 5322 §2.2.3 folding
        else:
            fields.append(line)


def _field_name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def _write_root_replaced(
    file: BinaryIO, drop: tuple[bytes, ...], extra: list[bytes], body: bytes | None,
    ending: bytes, sink: Sink,
) -> None:
    """Root header fields minus `drop`, then `extra`, then the original body (or `body`)."""
    fields, body_offset = _root_header_fields(file)
    for field in fields:
        if _field_name(field) not in drop:
            sink(field)
    for field in extra:
        sink(field)
    sink(ending)
    if body is None:
        file.seek(body_offset)
        _copy(file, None, sink)
    else:
        sink(body + ending)


def _after_partial_line(file: BinaryIO, offset: int) -> bool:
    """Whether the octet before `offset` is not a line break; the file is left at `offset`."""
    file.seek(offset - 1)
    return file.read(1) != b"\n"


def write_stripped(
    open_message: Callable[[], BinaryIO], removals: list[Removal], ending: bytes, sink: Sink,
) -> None:
    """Stream the message with every removal replaced by a notice part (see module docstring)."""
    header = _header_line(STRIPPED_HEADER, stripped_header_value(removals), ending)
    with open_message() as file:
        if removals and removals[0].is_root:
            notice = _notice_entity(notice_text(removals[0]), ending)
            head, _, body = notice.partition(ending + ending)
            extra = [header] + [line + ending for line in head.split(ending)]
            _write_root_replaced(file, _BODY_FIELDS, extra, body, ending, sink)
            return
        sink(header)
        position = 0
        for removal in removals:
            _copy(file, removal.start - position, sink)
            if removal.start and _after_partial_line(file, removal.start):
                sink(ending)  # an empty part right after a delimiter line the message left open
            sink(_notice_entity(notice_text(removal), ending))
            file.seek(removal.end)
            position = removal.end
        _copy(file, None, sink)


def write_with_subject(open_message: Callable[[], BinaryIO], subject: str, ending: bytes, sink: Sink) -> None:
    """Stream the message with its Subject field(s) replaced by `subject`."""
    with open_message() as file:
        _write_root_replaced(file, (b"subject",), [_header_line("Subject", subject, ending)], None, ending, sink)
