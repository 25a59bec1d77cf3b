"""Breaking over-long lines of a message for the wire (RFC 5322 §2.1.1, RFC 5321 §4.5.3.1.6).

Owns: `LineWrapper`, which streams a message and breaks every line longer than 998 octets
(without its line ending) the way Postfix's `smtp_line_length_limit` does: a header field is
folded at its last whitespace that fits (RFC 5322 §2.2.3: CRLF before the WSP, so unfolding
gives back the same field), or, without one, broken with CRLF SP; a body line is broken with
CRLF SP (a continuation that starts with a space can never be read as a MIME boundary or a
header). `wrap_message` does the same for a whole message in memory, and `wire_form` gives the
lines of a whole message exactly as the delivery side will send them (broken and CRLF-ended), for
what must be computed over the delivered bytes (a DKIM signature).
Must not: change anything else (line endings, dot-stuffing: `smtp/client.py` BodyEncoder does
that after this), or hold more than one line's worth of bytes between chunks.
"""

from __future__ import annotations

from mailgate.smtp.data import LineEndingNormalizer

MAX_LINE = 998  # RFC 5322 §2.1.1: at most 998 characters per line, excluding the CRLF
_BREAK = b"\r\n "
_WSP = (0x20, 0x09)


class LineWrapper:
    def __init__(self, limit: int = MAX_LINE) -> None:
        self._limit = limit
        self._in_head = True
        self._partial = b""  # the current line's bytes not written yet (<= limit + CR, no LF)

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of `chunk` to send now, long lines broken."""
        data = self._partial + chunk if self._partial else chunk
        cut = data.rfind(b"\n") + 1
        complete, partial = data[:cut], data[cut:]
        out = bytearray()
        if complete and self._in_head:
            complete = self._head_lines(complete, out)
        if complete:
            out += complete if not _has_long_line(complete, self._limit) else self._break_lines(complete)
        # A line still open and already too long (a last CR may be half of the CRLF ending it).
        while len(partial) - partial.endswith(b"\r") > self._limit:
            piece, partial = self._split(partial)
            out += piece
        self._partial = partial
        return bytes(out)

    def finish(self) -> bytes:
        """The last, unterminated line (never longer than the limit)."""
        rest, self._partial = self._partial, b""
        return rest

    def _head_lines(self, complete: bytes, out: bytearray) -> bytes:
        """Write the header lines in `complete` (up to the empty line); return the body part."""
        head_end = _end_of_head(complete)
        head = complete if head_end < 0 else complete[:head_end]
        if not _has_long_line(head, self._limit):  # the common case: nothing to fold, one copy
            out += head
            self._in_head = head_end < 0
            return b"" if head_end < 0 else complete[head_end:]
        position = 0
        while position < len(complete):
            end = complete.index(b"\n", position) + 1
            line = complete[position:end]
            position = end
            if line in (b"\r\n", b"\n"):
                self._in_head = False
                out += line
                break
            out += self._break_lines(line)
        return complete[position:]

    def _break_lines(self, lines: bytes) -> bytes:
        """`lines` (complete lines, ending with LF) with each long one broken."""
        out = bytearray()
        # Only LF ends a line here (a bare CR is an octet: it can only make the lines the encoder
        # sends shorter), so where lines break never depends on where chunks were cut.
        for line in lines.split(b"\n")[:-1]:
            body = line[:-1] if line.endswith(b"\r") else line
            ending = line[len(body):] + b"\n"
            while len(body) > self._limit:
                piece, body = self._split(body)
                out += piece
            out += body + ending
        return bytes(out)

    def _split(self, line: bytes) -> tuple[bytes, bytes]:
        """(first piece with its line break, the rest to continue) of a line over the limit."""
        if self._in_head:
            fold = max(line.rfind(b" ", 1, self._limit + 1), line.rfind(b"\t", 1, self._limit + 1))
            if fold > 0 and line[:fold].strip(b" \t"):
                return line[:fold] + b"\r\n", line[fold:]  # RFC 5322 §2.2.3: CRLF before the WSP
        return line[: self._limit] + b"\r\n", b" " + line[self._limit:]


def _end_of_head(lines: bytes) -> int:
    """The index just past the first empty line (CRLF or LF alone) of complete `lines`, or -1."""
    if lines.startswith(b"\n"):
        return 1
    if lines.startswith(b"\r\n"):
        return 2
    # Further in, an empty line is found with the LF that ends the line before it.
    searches = ((lines.find(b"\n\n"), 2), (lines.find(b"\n\r\n"), 3))
    return min((found + length for found, length in searches if found >= 0), default=-1)


def _has_long_line(lines: bytes, limit: int) -> bool:
    """Whether a line of `lines` may hold more than `limit` octets. A line that long holds a whole
    block of `limit // 2` octets without LF, so one `find` per block (in C) tells; a block without
    LF (a line of half the limit or more) sends the chunk to the exact `_break_lines`."""
    if len(lines) <= limit:
        return False
    block = max(limit // 2, 1)
    return any(lines.find(b"\n", start, start + block) < 0 for start in range(0, len(lines) - block + 1, block))


def wrap_message(message: bytes, limit: int = MAX_LINE) -> bytes:
    """A whole message with its long lines broken (the same as streaming it through a wrapper)."""
    wrapper = LineWrapper(limit)
    return wrapper.feed(message) + wrapper.finish()


def wire_form(message: bytes) -> bytes:
    """`message` with long lines broken and every line ending CRLF, as the delivery side's
    `LineWrapper` and `BodyEncoder` will send it (dot-stuffing aside, which the receiver undoes)."""
    return LineEndingNormalizer().normalize(wrap_message(message))
