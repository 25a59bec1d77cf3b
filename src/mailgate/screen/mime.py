"""A streaming, bounded MIME walk over a spooled message.

Owns: `walk(file, needs, on_part)`, which reads a binary file object line by line, follows
multipart boundaries (RFC 2046 §5.1) and message/rfc822 bodies (RFC 2046 §5.2.1) to
`MAX_NESTING`, decodes each leaf's transfer encoding (RFC 2045 §6.7 quoted-printable, §6.8
base64) as it streams, and hands every leaf to `on_part` as a `LeafPart`: its headers, names
(RFC 2231 and RFC 2047 forms decoded by the `email` header parser), byte range in the raw message
(for strip), decoded size, sniffed kind, and, only when a rule needs them, decoded text and the
names inside a zip. Also returns the root header section (for subject and header rules).
Must not: decide anything (rules do), or hold a whole message or a whole part in memory.

Memory bounds, whatever the message size: one line piece (`MAX_LINE`), one entity's header
section (`MAX_HEADER_BYTES`), the boundary stack (`MAX_NESTING`), one part's head for sniffing
(`sniff.HEAD_BYTES`), one part's decoded text (`MAX_TEXT_CHARS`, only when a body rule exists),
and a zip candidate spooled in memory up to `ZIP_MEMORY_BYTES` then on disk up to `MAX_ZIP_BYTES`
(only when an `in_zip` rule exists). Nothing of a part is kept once `on_part` returns.

Hand-written rather than `email.feedparser`: the feed parser keeps every payload of the message
in its object tree, and gives no byte offsets, which strip needs to copy everything else verbatim
(so DKIM-signed headers and untouched parts stay byte-identical). The `email` package still parses
each header section.
"""

from __future__ import annotations

import binascii
import codecs
import email.parser
import email.policy
import email.utils
from email.header import decode_header, make_header
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import BinaryIO

from mailgate.screen import sniff as sniffing
from mailgate.screen.archives import ZipListing, list_zip

MAX_LINE = 64 * 1024  # longer lines are read in pieces (RFC 5322 §2.1.1 allows 998 octets)
READ_CHUNK = 64 * 1024
MAX_HEADER_BYTES = 256 * 1024  # per entity; the rest of an oversized section is skipped
MAX_NESTING = 32  # multipart / message depth; deeper containers are treated as opaque leaves
MAX_ENTITIES = 10_000  # past this many entities, containers are no longer opened
MAX_TEXT_CHARS = 1024 * 1024  # decoded text kept per part for body rules
ZIP_MEMORY_BYTES = 1024 * 1024
MAX_ZIP_BYTES = 32 * 1024 * 1024  # larger zips are not listed (`zip_too_big` is set)

# compat32: several times faster than policy.default; the few values rules read are decoded
# explicitly by `decoded` and `_names`.
_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_NOT_BASE64 = bytes(byte for byte in range(256) if byte not in _BASE64_ALPHABET)


@dataclass(frozen=True, slots=True)
class Needs:
    """Which expensive facts the rules need; the walk skips what nobody asked for."""

    decode: bool = False  # decoded size and sniffing
    text: bool = False  # decoded text of text/* parts
    zips: bool = False  # names inside zip archives


@dataclass
class LeafPart:
    """One leaf entity. `start`/`end` delimit it in the raw message: its first header byte to the
    byte before the line break that precedes the next boundary (RFC 2046 §5.1.1)."""

    path: str  # "1.2.1": position under the root ("" is the root itself)
    headers: Message
    content_type: str
    names: list[str]
    start: int
    end: int
    in_multipart: bool  # False for the root and for the body of a message/rfc822
    size: int = 0
    sniffed: sniffing.Sniffed | None = None
    text: str | None = None
    zip: ZipListing | None = None
    zip_too_big: bool = False


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
    truncated: bool = False  # nesting or entity limits left some containers unopened


class _Reader:
    """Lines (or pieces of over-long lines) with their offsets, one line of push-back, and
    `bulk()`: runs of whole lines that cannot hold a delimiter, so leaf bodies (nearly all of a
    message's bytes) are skipped or decoded in large blocks rather than line by line."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
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
                return self._consume(self._position + MAX_LINE)
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


def decoded(value: object) -> str:
    """A header value as text: raw 8-bit bytes as UTF-8, RFC 2047 encoded words decoded."""
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        return text


def _names(headers: Message) -> list[str]:
    """Content-Disposition filename and Content-Type name, decoded: RFC 2231 (charset, language,
    continuations) and the RFC 2047 encoded words some mailers put in quoted parameters."""
    names: list[str] = []
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        try:
            raw = headers.get_param(param, None, header)
            value = decoded(email.utils.collapse_rfc2231_value(raw)) if raw else ""
        except (ValueError, LookupError, TypeError, UnicodeError):
            value = ""
        value = value.strip()
        if value and value not in names:
            names.append(value)
    return names


class _Decoder:
    """Content-Transfer-Encoding decoding, line by line, with base64 carry-over (RFC 2045 §6)."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._carry = b""

    def feed(self, raw: bytes) -> bytes:
        if self._encoding == "base64":
            data = self._carry + raw.translate(None, _NOT_BASE64)
            usable = len(data) - len(data) % 4
            self._carry = data[usable:]
            return _a2b_base64(data[:usable])
        if self._encoding == "quoted-printable":
            return binascii.a2b_qp(raw)
        return raw


def _a2b_base64(data: bytes) -> bytes:
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        return b""


class _LeafSink:
    """Collects what the rules need from one leaf's decoded bytes, within the module's bounds."""

    def __init__(self, part: LeafPart, needs: Needs) -> None:
        self._part = part
        self._needs = needs
        self._head = bytearray()
        self._macro: sniffing.MacroScanner | None = None
        self._text_decoder = None
        self._text: list[str] = []
        self._text_chars = 0
        self._zip = None
        if needs.text and part.content_type.startswith("text/"):
            charset = part.headers.get_content_charset() or "us-ascii"
            try:
                self._text_decoder = codecs.getincrementaldecoder(charset)(errors="replace")
            except LookupError:
                self._text_decoder = codecs.getincrementaldecoder("latin-1")()
        if needs.zips and not part.content_type.startswith("text/"):
            self._zip = tempfile.SpooledTemporaryFile(max_size=ZIP_MEMORY_BYTES)

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._part.size += len(data)
        if len(self._head) < sniffing.HEAD_BYTES:
            self._head += data[: sniffing.HEAD_BYTES - len(self._head)]
            if len(self._head) >= 8 and self._macro is None and self._head.startswith(b"\xd0\xcf\x11\xe0"):
                self._macro = sniffing.MacroScanner()
        if self._macro is not None:
            self._macro.feed(data)
        if self._text_decoder is not None and self._text_chars < MAX_TEXT_CHARS:
            chunk = self._text_decoder.decode(data)[: MAX_TEXT_CHARS - self._text_chars]
            self._text.append(chunk)
            self._text_chars += len(chunk)
        if self._zip is not None:
            if len(self._head) >= 4 and not self._head.startswith(b"PK"):
                self._drop_zip()
            elif self._part.size > MAX_ZIP_BYTES:
                self._part.zip_too_big = True
                self._drop_zip()
            else:
                self._zip.write(data)

    def _drop_zip(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def finish(self) -> None:
        part = self._part
        part.sniffed = sniffing.sniff(bytes(self._head))
        if part.sniffed is not None and part.sniffed.kind == "ole2" and self._macro and self._macro.found:
            part.sniffed = sniffing.OLE2_MACRO
        if self._text_decoder is not None:
            self._text.append(self._text_decoder.decode(b"", final=True))
            part.text = "".join(self._text)
        if self._zip is not None:
            if part.sniffed is not None and part.sniffed.kind in ("zip", "ooxml", "odf", "jar"):
                self._zip.seek(0)
                part.zip = list_zip(self._zip)  # type: ignore[arg-type]
            self._drop_zip()


class _Walker:
    def __init__(self, file: BinaryIO, needs: Needs, on_part: Callable[[LeafPart], None]) -> None:
        self._reader = _Reader(file)
        self._needs = needs
        self._on_part = on_part
        self.result: WalkResult | None = None
        self._started = 0  # entities begun, bounded by MAX_ENTITIES

    def _headers(self, boundaries: list[bytes]) -> tuple[Message, bytes]:
        """Read one header section up to its blank line (or a delimiter: then no body at all)."""
        kept = bytearray()
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
        return _HEADER_PARSER.parsebytes(bytes(kept)), first_ending or b"\r\n"

    def entity(self, path: str, boundaries: list[bytes], in_multipart: bool, default_type: str) -> None:
        self._started += 1
        start = self._reader.offset
        headers, ending = self._headers(boundaries)
        if self.result is None:
            self.result = WalkResult(root_headers=headers, line_ending=ending)
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
                result.truncated = True
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
                assert self.result is not None
                self.result.truncated = True
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
        part = LeafPart(path, headers, content_type, _names(headers), start, start, in_multipart)
        wants_body = self._needs.decode or self._needs.text or self._needs.zips
        sink = _LeafSink(part, self._needs) if wants_body else None
        decoder = _Decoder(_encoding(headers))
        held = b""  # one line of delay: the line break before a delimiter is not content
        while True:
            block = self._reader.bulk()
            if block:
                if sink is not None:
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
            if sink is not None and held:
                sink.feed(decoder.feed(held))
            held = line
        part.end = self._reader.end_of_entity()
        if sink is not None:
            sink.feed(decoder.feed(held))
            sink.finish()
        self._on_part(part)


_IDENTITY_ENCODINGS = ("7bit", "8bit", "binary")  # RFC 2046 §5.2.1: message/rfc822 allows no other


def _encoding(headers: Message) -> str:
    return str(headers.get("content-transfer-encoding", "7bit")).strip().lower()


def _child(path: str, index: int) -> str:
    return f"{path}.{index}" if path else str(index)


def root_headers(file: BinaryIO) -> Message:
    """Only the root header section: for header rules when no rule needs the body."""
    return _Walker(file, Needs(), lambda part: None)._headers([])[0]


def walk(file: BinaryIO, needs: Needs, on_part: Callable[[LeafPart], None]) -> WalkResult:
    """Walk the message in `file` from its start; `on_part` sees every leaf in order."""
    walker = _Walker(file, needs, on_part)
    walker.entity("", [], False, "text/plain")
    assert walker.result is not None
    return walker.result
