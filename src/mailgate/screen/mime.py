"""A streaming, bounded MIME walk over a spooled message.

Owns: `walk(file, needs, on_part)`, which reads a binary file object line by line, follows
multipart boundaries (RFC 2046 §5.1) and message/rfc822 bodies (RFC 2046 §5.2.1) to
`MAX_NESTING`, decodes each leaf's transfer encoding (RFC 2045 §6.7 quoted-printable, §6.8
base64, via leaf.py) as it streams, and hands every leaf to `on_part` as a `LeafPart`: its
headers, names, byte range in the raw message (for strip), decoded size, sniffed kind, and, only
when a rule needs them, decoded text and the names inside a zip. Also returns the root header
section (for subject and header rules) and every entity's byte range.
Must not: decide anything (rules do), or hold a whole message or a whole part in memory.

Nothing past a bound passes unseen: every place a limit stops the walk is reported in
`WalkResult.unseen` (bounds.py), and the walk stops with `ScreenTimeout` at its deadline (checked
at every read). Parameter parsing cost is bounded too: the `email` package's parameter parser
is quadratic in the semicolons of a quoted value, so a Content-Type or Content-Disposition field
longer than `MAX_PARAM_FIELD` or with more than `MAX_PARAMS` semicolons is not parsed; its entity
is reported unseen.

Memory bounds, whatever the message size: one read buffer (`READ_CHUNK` plus a line piece of
at most `MAX_LINE`), one entity's header section (`MAX_HEADER_BYTES`), the boundary stack
(`MAX_NESTING`), the entity table (`MAX_ENTITIES` small tuples), and one part's collected bytes
(leaf.py's limits). Nothing of a part is kept once `on_part` returns.

Hand-written rather than `email.feedparser`: the feed parser keeps every payload of the message
in its object tree, and gives no byte offsets, which strip needs to copy everything else verbatim
(so DKIM-signed headers and untouched parts stay byte-identical). The `email` package still parses
each header section.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import BinaryIO

from mailgate.screen.bounds import EVERYTHING, HEADERS, Deadline, Unseen
from mailgate.screen.leaf import Decoder, LeafPart, LeafSink, Needs, part_names, unseen_in

MAX_LINE = 64 * 1024  # longer lines are read in pieces (RFC 5322 §2.1.1 allows 998 octets)
READ_CHUNK = 64 * 1024
MAX_HEADER_BYTES = 256 * 1024  # per entity; the rest of an oversized section is skipped
MAX_NESTING = 32  # multipart / message depth; deeper containers are treated as opaque leaves
MAX_ENTITIES = 10_000  # past this many entities, containers are no longer opened
MAX_PARAM_FIELD = 16 * 1024  # longest Content-Type / Content-Disposition whose parameters are parsed
MAX_PARAMS = 100  # most semicolons in such a field (RFC 2231 §3 continuations included)
_PARAM_FIELDS = ("content-type", "content-disposition")
# compat32: several times faster than policy.default; the few values rules read are decoded
# explicitly by `leaf.decoded` and `leaf.part_names`.
_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)
__all__ = ["Entity", "LeafPart", "Needs", "WalkResult", "root_headers", "walk"]


@dataclass(frozen=True, slots=True)
class Entity:
    """Where an entity (leaf or container) lies in the raw message, for strip."""

    start: int
    end: int
    in_multipart: bool


@dataclass
class WalkResult:
    root_headers: Message
    line_ending: bytes  # of the message's first line, for text that rewriting adds
    entities: dict[str, Entity] = field(default_factory=dict)  # by path, at most MAX_ENTITIES
    unseen: list[Unseen] = field(default_factory=list)  # where a limit stopped the walk


class _Reader:
    """Lines (or pieces of over-long lines) with their offsets, one line of push-back, and
    `bulk()`: runs of whole lines that cannot hold a delimiter, so leaf bodies (nearly all of a
    message's bytes) are skipped or decoded in large blocks rather than line by line."""

    def __init__(self, file: BinaryIO, deadline: Deadline | None) -> None:
        self._file = file
        self._deadline = deadline
        self._buffer = b""
        self._position = 0
        self._eof = False
        self.offset = 0
        self._pushed_back = False
        self._next_starts_line = True
        self.piece_started_line = True  # whether the piece just read began a line
        self.last_ending = b""  # line break of the last piece consumed (not pushed back)
        self._saved: tuple[bool, bool, bytes] = (True, True, b"")

    def _fill(self) -> bool:
        """Append one read to the unread rest of the buffer; False at the end of the file."""
        if self._eof:
            return False
        if self._deadline is not None:
            self._deadline.check()
        chunk = self._file.read(READ_CHUNK)
        if not chunk:
            self._eof = True
            return False
        self._buffer = self._buffer[self._position:] + chunk
        self._position = 0
        return True

    def _consume(self, end: int) -> bytes:
        piece = self._buffer[self._position:end]
        self._position = end
        self._saved = (self._next_starts_line, self.piece_started_line, self.last_ending)
        self.piece_started_line = self._next_starts_line
        self._next_starts_line = piece.endswith(b"\n")
        self.last_ending = _line_ending(piece)
        self.offset += len(piece)
        self._pushed_back = False
        return piece

    def line(self) -> bytes:
        while True:
            newline = self._buffer.find(b"\n", self._position, self._position + MAX_LINE)
            if newline >= 0:
                return self._consume(newline + 1)
            if len(self._buffer) - self._position >= MAX_LINE:
                cut = self._position + MAX_LINE
                if self._buffer[cut - 1:cut] == b"\r":
                    cut -= 1  # never part a CRLF: the piece with the LF would end "\n" only
                return self._consume(cut)
            if not self._fill():
                return self._consume(len(self._buffer))

    def bulk(self) -> bytes:
        """Whole lines up to (not including) the next line that starts with "--"; b"" when the
        next line does, or when no whole line is buffered at the end of the file."""
        if not self._next_starts_line:
            return b""
        while True:
            if len(self._buffer) - self._position < 2 and self._fill():
                continue
            if self._buffer.startswith(b"--", self._position):
                return b""
            candidate = self._buffer.find(b"\n--", self._position)
            if candidate >= 0:
                return self._consume(candidate + 1)
            last_newline = self._buffer.rfind(b"\n", self._position)
            if last_newline >= 0:
                return self._consume(last_newline + 1)
            if len(self._buffer) - self._position >= MAX_LINE or not self._fill():
                return b""

    def push(self, piece: bytes) -> None:
        """Un-read the piece `line()` just returned (it is still in the buffer)."""
        self._position -= len(piece)
        self.offset -= len(piece)
        self._pushed_back = True
        self._next_starts_line, self.piece_started_line, self.last_ending = self._saved

    def end_of_entity(self) -> int:
        """Where the entity just read ends: before the line break that belongs to the delimiter
        pushed back (RFC 2046 §5.1.1), or at the end of the message."""
        if not self._pushed_back:
            return self.offset
        return self.offset - len(self.last_ending)


def _line_ending(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return b"\r\n"
    return b"\n" if line.endswith(b"\n") else b""


def _boundary_of(line: bytes, boundaries: list[bytes]) -> bytes | None:
    """The boundary this delimiter line names (`--b` or `--b--`, RFC 2046 §5.1.1), else None."""
    if not line.startswith(b"--") or not boundaries:
        return None
    stripped = line.rstrip(b" \t\r\n")  # transport padding after the delimiter is allowed
    for boundary in reversed(boundaries):
        if stripped == b"--" + boundary or stripped == b"--" + boundary + b"--":
            return boundary
    return None

class _Walker:
    def __init__(
        self, file: BinaryIO, needs: Needs, on_part: Callable[[LeafPart], None],
        deadline: Deadline | None = None,
    ) -> None:
        self._reader = _Reader(file, deadline)
        self._needs = needs
        self._on_part = on_part
        self.result: WalkResult | None = None
        self._started = 0  # entities begun, bounded by MAX_ENTITIES
        self.unseen: list[Unseen] = []

    def _headers(self, boundaries: list[bytes], path: str = "") -> tuple[Message, bytes]:
        """Read one header section up to its blank line (or a delimiter: then no body at all)."""
        kept = bytearray()
        over = False
        first_ending = b""
        while True:
            line = self._reader.line()
            if not line:
                break
            if self._reader.piece_started_line and _boundary_of(line, boundaries) is not None:
                self._reader.push(line)
                break
            first_ending = first_ending or _line_ending(line)
            if self._reader.piece_started_line and line in (b"\r\n", b"\n"):
                break
            if len(kept) + len(line) <= MAX_HEADER_BYTES:
                kept += line
            else:
                over = True
        if over:
            self.unseen.append(Unseen(path, EVERYTHING, f"header section over {MAX_HEADER_BYTES} bytes"))
        headers = _HEADER_PARSER.parsebytes(bytes(kept))
        for name in _PARAM_FIELDS:
            if any(len(value) > MAX_PARAM_FIELD or value.count(";") > MAX_PARAMS
                   for value in map(str, headers.get_all(name) or [])):
                del headers[name]
                self.unseen.append(Unseen(path, EVERYTHING - {HEADERS}, f"{name} parameters too long"))
        return headers, first_ending or b"\r\n"

    def entity(self, path: str, boundaries: list[bytes], in_multipart: bool, default_type: str) -> None:
        self._started += 1
        start = self._reader.offset
        headers, ending = self._headers(boundaries, path)
        if self.result is None:
            self.result = WalkResult(root_headers=headers, line_ending=ending, unseen=self.unseen)
        result = self.result
        if "content-type" not in headers:
            headers.set_default_type(default_type)
        content_type = headers.get_content_type()
        depth = path.count(".") + 1 if path else 0
        openable = depth < MAX_NESTING and self._started < MAX_ENTITIES
        if openable and content_type.startswith("multipart/") and headers.get_boundary():
            self._multipart(path, headers, boundaries)
        elif openable and content_type == "message/rfc822" and _encoding(headers) in _IDENTITY_ENCODINGS:
            self.entity(_child(path, 1), boundaries, False, "text/plain")
        else:
            if not openable and content_type.startswith(("multipart/", "message/")):
                limit = f"MIME nesting deeper than {MAX_NESTING}" if depth >= MAX_NESTING else \
                    f"more than {MAX_ENTITIES} MIME entities"
                self.unseen.append(Unseen(path, EVERYTHING - {HEADERS}, limit))
            self._leaf(path, headers, content_type, start, boundaries, in_multipart)
        result.entities[path] = Entity(start, self._reader.end_of_entity(), in_multipart)

    def _multipart(self, path: str, headers: Message, outer: list[bytes]) -> None:
        boundary = headers.get_boundary().encode("utf-8", "replace")
        boundaries = [*outer, boundary]
        child_type = "message/rfc822" if headers.get_content_subtype() == "digest" else "text/plain"
        index = 0
        while True:  # preamble, then one child per delimiter, then the epilogue
            line = self._reader.line()
            if not line:
                return
            found = _boundary_of(line, boundaries) if self._reader.piece_started_line else None
            if found is None:
                continue
            if found != boundary:  # an outer delimiter closes this multipart too
                self._reader.push(line)
                return
            if line.rstrip(b" \t\r\n").endswith(b"--"):  # close-delimiter: the epilogue follows
                self._skip_until(outer)
                return
            if self._started >= MAX_ENTITIES:
                self.unseen.append(Unseen(path, EVERYTHING - {HEADERS}, f"more than {MAX_ENTITIES} MIME entities"))
                self._skip_until(outer)
                return
            index += 1
            self.entity(_child(path, index), boundaries, True, child_type)

    def _skip_until(self, boundaries: list[bytes]) -> None:
        while True:
            line = self._reader.line()
            if not line:
                return
            if self._reader.piece_started_line and _boundary_of(line, boundaries) is not None:
                self._reader.push(line)
                return

    def _leaf(
        self, path: str, headers: Message, content_type: str, start: int,
        boundaries: list[bytes], in_multipart: bool,
    ) -> None:
        part = LeafPart(path, headers, content_type, part_names(headers), start, start, in_multipart)
        wants_body = self._needs.decode or self._needs.size or self._needs.text or self._needs.zips
        sink = LeafSink(part, self._needs) if wants_body else None
        decoder = Decoder(_encoding(headers))
        held = b""  # one line of delay: the line break before a delimiter is not content
        while True:
            block = self._reader.bulk()
            if block:
                if sink is not None and sink.wants_more:
                    last_line = block.rfind(b"\n", 0, len(block) - 1) + 1
                    sink.feed(decoder.feed(held + block[:last_line]))
                    held = block[last_line:]
                continue
            line = self._reader.line()
            if not line:
                break
            if self._reader.piece_started_line and _boundary_of(line, boundaries) is not None:
                self._reader.push(line)
                held = held[: len(held) - len(_line_ending(held))]
                break
            if sink is not None and held and sink.wants_more:
                sink.feed(decoder.feed(held))
            held = line
        part.end = self._reader.end_of_entity()
        if sink is not None:
            if sink.wants_more:
                sink.feed(decoder.feed(held) + decoder.finish())
            sink.finish()
            self.unseen += unseen_in(part, sink)
        self._on_part(part)


_IDENTITY_ENCODINGS = ("7bit", "8bit", "binary")  # RFC 2046 §5.2.1: message/rfc822 allows no other


def _encoding(headers: Message) -> str:
    return str(headers.get("content-transfer-encoding", "7bit")).strip().lower()


def _child(path: str, index: int) -> str:
    return f"{path}.{index}" if path else str(index)


def root_headers(file: BinaryIO, deadline: Deadline | None = None) -> tuple[Message, list[Unseen]]:
    """Only the root header section (and whether it was cut): for header rules when no rule
    needs the body."""
    walker = _Walker(file, Needs(), lambda part: None, deadline)
    return walker._headers([])[0], walker.unseen


def walk(
    file: BinaryIO, needs: Needs, on_part: Callable[[LeafPart], None], deadline: Deadline | None = None,
) -> WalkResult:
    """Walk the message in `file` from its start; `on_part` sees every leaf in order."""
    walker = _Walker(file, needs, on_part, deadline)
    walker.entity("", [], False, "text/plain")
    assert walker.result is not None
    return walker.result
