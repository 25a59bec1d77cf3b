"""Message body reading: the DATA end-of-data scanner and the body inspector shared with BDAT.

Owns: finding the end of a DATA body (RFC 5321 §4.1.1.4: only CRLF "." CRLF, or "." CRLF as
the very first line), dot-unstuffing (RFC 5321 §4.5.2), and the facts the caller needs about a
body whether it came by DATA or by BDAT (RFC 3030): its size against the limit (RFC 1870),
bare CR or LF anywhere (SMTP smuggling, CVE-2023-51764 family) and text lines over the limit
(RFC 5321 §4.5.3.1.6), and, when asked, turning every bare CR or LF into CRLF (`normalize`, the
same rule the delivery side's `BodyEncoder` applies). Whatever the caller does with bare line
endings, the end of data is only ever CRLF "." CRLF: a bare CR or LF never ends a message.
Must not: know about commands, replies or state. Every scan is one C-level pass (re's literal
search, bytes.translate, find / rfind / replace), so a body is never walked line by line in
Python, and the body is copied once (docs/performance.md, bench/data_path_bench.py).
"""

from __future__ import annotations

import re

TERMINATOR = b"\r\n.\r\n"  # RFC 5321 §4.1.1.4
_STUFFED = b"\r\n."  # RFC 5321 §4.5.2: a line that starts with a dot; the dot goes
_CR = 0x0D
_LF = 0x0A
_CR_MARKS = bytes(octet == _CR for octet in range(256))  # bytes.translate tables: 1 at a CR
_LF_MARKS = bytes(octet == _LF for octet in range(256))  # 1 at an LF, 0 elsewhere
# The next stuffed dot or the end of data, whichever comes first (re's literal search runs
# faster here than bytes.find).
_STUFFED_OR_END = re.compile(rb"\r\n\.(?:\r\n)?")
# Stuffed dots are cut out one search at a time; past this many in one scan the rest of the
# region is searched for the terminator and unstuffed with one `replace` (no Python loop per line).
_DOTS_ONE_BY_ONE = 32


def _held_back(view: bytes) -> int:
    """How many trailing bytes might start a terminator that the next bytes complete."""
    for length in (4, 3, 2, 1):
        if view.endswith(TERMINATOR[:length]):
            return length
    return 0


def _cut(buffer: bytes | bytearray, region_end: int, dots: list[int], replace_rest: bool) -> bytes:
    """`buffer[:region_end]` as bytes without the octets at `dots` (sorted), one copy; with
    `replace_rest`, every stuffed dot after the last of `dots` is taken out by `replace`."""
    view = memoryview(buffer)  # no copy; released before the caller resizes `buffer`
    pieces: list[memoryview | bytes] = []
    try:
        last = 0
        for dot in dots:
            if dot >= region_end:
                break
            pieces.append(view[last:dot])
            last = dot + 1
        if replace_rest and last < region_end:
            pieces.append(bytes(view[last:region_end]).replace(_STUFFED, b"\r\n"))
        elif not pieces:
            return bytes(view[:region_end])
        else:
            pieces.append(view[last:region_end])
        return b"".join(pieces)
    finally:
        pieces.clear()
        view.release()


class DotBodyScanner:
    """Splits a DATA stream into unstuffed body bytes and the end of data.

    `_previous` is the last two octets already consumed (initially a virtual CRLF: the body
    starts at a line start), so a terminator or a stuffed dot split across `scan` calls at any
    byte is still seen. A bare LF or bare CR never ends the data: `\\n.\\n`, `\\r\\n.\\n`,
    `\\n.\\r\\n` and `\\r.\\r\\n` are body bytes (which the inspector flags).
    One pass finds both: every CRLF "." is either the terminator (CRLF follows) or a stuffed
    dot, searched in the caller's buffer itself; only the two consumed octets and the first four
    of `buffer` are joined (for a terminator or dot that starts before `buffer`), and the body is
    copied once.
    """

    def __init__(self) -> None:
        self._previous = b"\r\n"

    def scan(self, buffer: bytes | bytearray) -> tuple[bytes, int, bool]:
        """Return (unstuffed body bytes, octets of `buffer` consumed, end of data reached)."""
        if not buffer:
            return b"", 0, False
        previous = self._previous
        # Positions are in `buffer`; -2 and -1 are the two octets of `previous`.
        joint = previous + bytes(buffer[:4])
        end: int | None = joint.find(TERMINATOR) - 2 if TERMINATOR in joint else None
        dots: list[int] = []
        replace_rest = False
        if end is None:
            stuffed = joint.find(_STUFFED, 0, 4)  # a dot at position 0 or 1, after `previous`
            if stuffed >= 0:
                dots.append(stuffed)
            start = 0
            while (match := _STUFFED_OR_END.search(buffer, start)) is not None:
                found = match.start()
                if match.end() - found == len(TERMINATOR):
                    end = found
                    break
                dots.append(found + 2)  # a dot at the buffer's end may yet be the terminator's:
                start = found + 3  # then it is held back below and not cut
                if len(dots) >= _DOTS_ONE_BY_ONE:
                    replace_rest = True
                    found = buffer.find(TERMINATOR, start)
                    end = found if found >= 0 else None
                    break
        if end is not None:
            # The CRLF before the final dot belongs to the message; the ".\r\n" does not.
            region_end, consumed, done = end + 2, end + 5, True
        else:
            region_end = max(len(buffer) - _held_back(previous + bytes(buffer[-4:])), 0)
            consumed, done = region_end, False
        if region_end <= 0:
            return b"", consumed, done
        body = _cut(buffer, region_end, dots, replace_rest)
        self._previous = (previous + bytes(buffer[max(region_end - 2, 0):region_end]))[-2:]
        return body, consumed, done


def _crlf_only(chunk: bytes, start: int, end: int) -> bool:
    """True when `chunk[start:end]` has no bare CR or LF: an LF right after every CR and nowhere
    else, so the CRs' marks moved one octet on are the LFs' marks (two translations and one
    comparison; no count, no search)."""
    if end <= start:
        return True
    crs, lfs = chunk.translate(_CR_MARKS), chunk.translate(_LF_MARKS)
    # crs[start:end - 1] == lfs[start + 1:end], compared in place (no slice copies)
    return not (lfs[start] or crs[end - 1]) and crs.startswith(memoryview(lfs)[start + 1:end], start)


class LineEndingNormalizer:
    """Streams body bytes with every bare CR or LF turned into CRLF (RFC 5321 §2.3.8).

    A CR at the end of a chunk is written as CRLF at once; if the next chunk starts with the LF
    that made it a pair, that LF is dropped, so nothing is held back between chunks.
    """

    def __init__(self) -> None:
        self._drop_lf = False

    def passes_unchanged(self, chunk: bytes) -> bool:
        """True when `normalize(chunk)` would return `chunk` itself, for a chunk already known to
        hold no bare CR or LF (BodyInspector's scan): no CR at its end, no LF to drop at its start."""
        return not self._drop_lf and chunk[-1] != _CR

    def normalize(self, chunk: bytes) -> bytes:
        if self._drop_lf:
            self._drop_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" not in chunk:
            return chunk.replace(b"\n", b"\r\n")  # LF-only lines (a common bare case): one pass
        if chunk.endswith(b"\r"):
            self._drop_lf = True
        elif _crlf_only(chunk, 0, len(chunk)):
            return chunk  # already CRLF-clean: no copy
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


class BodyInspector:
    """Counts a message's octets and flags what makes the caller refuse it; with `normalize`,
    passes the body on with bare CR and LF turned into CRLF (`LineEndingNormalizer`).

    Bare line endings: every CR has an LF right after it and every LF a CR right before it,
    seen by comparing the chunk's CR and LF marks one octet apart (a pair split between two
    chunks is joined up by `_pending_cr`). Long lines: from a line start, the next `max_line`
    octets must hold an LF, and the last LF among them is where the next window starts, so one
    `rfind` covers about `max_line` octets.
    The same inspector serves every BDAT chunk of a transaction: BDAT framing is a byte count,
    so a bare LF there cannot end the message here, but the message may later be relayed with
    DATA to a next hop that does treat bare LF as a line end, so BDAT content is flagged too.
    """

    def __init__(self, max_size: int, max_line: int, normalize: bool = False) -> None:
        self.max_size = max_size  # RFC 1870; 0 = unlimited
        self.max_line = max_line  # octets including CRLF, RFC 5321 §4.5.3.1.6
        self._normalizer = LineEndingNormalizer() if normalize else None
        self.size = 0
        self.oversize = False
        self.long_line = False
        self._bare = False
        self._pending_cr = False  # the last chunk ended with a CR: the next must start with LF
        self._open_line = 0  # octets of the current line not yet ended by LF

    @property
    def bare_line_ending(self) -> bool:
        """So far; a CR at the very end of the body is bare too (its LF never came)."""
        return self._bare or self._pending_cr

    def inspect(self, chunk: bytes) -> bytes | None:
        """Account for `chunk` (the octets received); return what to pass on (normalized when
        asked), or None (nothing to pass, or past the size limit)."""
        if not chunk:
            return None
        self.size += len(chunk)
        if not self._bare:
            self._find_bare_line_endings(chunk)
        normalizer = self._normalizer
        # A chunk the scan just found clean needs no second look.
        if normalizer is not None and (self._bare or not normalizer.passes_unchanged(chunk)):
            chunk = normalizer.normalize(chunk)  # lines are measured as they will be stored
        if not self.long_line:
            self._measure_lines(chunk)
        if self.max_size and self.size > self.max_size:
            self.oversize = True  # from here on, bytes are counted and dropped
        return None if self.oversize or not chunk else chunk

    def _find_bare_line_endings(self, chunk: bytes) -> None:
        start = 0
        if self._pending_cr:
            if chunk[0] != _LF:
                self._bare = True
                return
            start = 1
        self._pending_cr = chunk[-1] == _CR
        end = len(chunk) - 1 if self._pending_cr and len(chunk) > start else len(chunk)
        if not _crlf_only(chunk, start, end):
            self._bare = True

    def _measure_lines(self, chunk: bytes) -> None:
        # Lines are measured up to their LF; "too long" is max_line or more octets before it,
        # i.e. more than max_line with the CRLF.
        first = chunk.find(b"\n")
        if first < 0:
            self._open_line += len(chunk)
            if self._open_line >= self.max_line:
                self.long_line = True
            return
        if self._open_line + first >= self.max_line:
            self.long_line = True
            return
        # From a line start, the next max_line octets must hold an LF; the last LF among them
        # starts the next window (every line that starts before it ends before it).
        size, window, line_start = len(chunk), self.max_line, first + 1
        while line_start + window <= size:
            last = chunk.rfind(b"\n", line_start, line_start + window)
            if last < 0:
                self.long_line = True
                return
            line_start = last + 1
        self._open_line = size - chunk.rfind(b"\n") - 1
