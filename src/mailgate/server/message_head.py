"""The head of an incoming message: the trace header we prepend and the header we inspect.

Owns: the Received header (RFC 5321 §4.4, with the RFC 3848 protocol names and the TLS
parameters), and `HeadBuilder`, which holds the message's header section (bounded) until its
end so that Received headers can be counted for loop detection (RFC 5321 §6.3) and, for
submission, a missing Message-ID and Date added (RFC 6409 §8.2, §8.3).
Must not: parse MIME or touch the body beyond the header section.
"""

from __future__ import annotations

import re
import time
import uuid

from mailgate.observe import stamps

# Past this much header we stop holding it back: the rest streams as body (bounded memory).
MAX_HEAD = 1024 * 1024
_HEAD_END = re.compile(rb"\r?\n(\r?\n)")  # group 1: the empty line, where the body starts
_RECEIVED = re.compile(rb"(?im)^received:")
_MESSAGE_ID = re.compile(rb"(?im)^message-id:")
# Its value, folded lines joined (RFC 5322 §3.6.4, §2.2.3), for the transaction log and the trace.
_MESSAGE_ID_VALUE = re.compile(rb"(?im)^message-id:[ \t]*((?:[^\r\n]|\r\n[ \t])*)")
MAX_LOGGED_MESSAGE_ID = 256  # our bound: a Message-ID is a line, not a payload
_DATE = re.compile(rb"(?im)^date:")
_HELO_SAFE = re.compile(r"[^\x21-\x7e]")


def received_header(
    *, helo: str, client_address: str, hostname: str, protocol: str, queue_id: str,
    tls: str, user: str | None, recipient: str | None, now: float | None = None,
) -> bytes:
    """`Received: from helo ([ip]) by host (mailgate) with ESMTPS id X for <r>; date` (RFC 5321 §4.4)."""
    helo_text = _HELO_SAFE.sub("?", helo) or "unknown"
    literal = f"IPv6:{client_address}" if ":" in client_address else client_address
    lines = [f"Received: from {helo_text} ([{literal}])"]
    lines.append(f"\tby {hostname} (mailgate) with {protocol} id {queue_id}")
    comments = []
    if tls:
        comments.append(tls)
    if user:
        comments.append(f"authenticated as {_HELO_SAFE.sub('?', user)}")
    if comments:
        lines.append("\t(" + "; ".join(comments) + ")")
    stamp = stamps.rfc5322_local(now if now is not None else time.time())
    lines.append(f"\tfor <{recipient}>; {stamp}" if recipient else f"\t; {stamp}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


class HeadBuilder:
    def __init__(self, *, add_message_id_and_date: bool, hostname: str, queue_id: str) -> None:
        self._buffer = bytearray()
        self._add = add_message_id_and_date
        self._hostname = hostname
        self._queue_id = queue_id
        self.done = False
        self.received_count = 0
        self.message_id = ""  # as stored (ours when we added it), set by completed_head()

    def feed(self, data: bytes) -> bytes:
        """Take body bytes; once the header ends (or passes MAX_HEAD) return what follows it.
        A header that ends in the chunk it starts in (the usual case) is searched in `data`
        itself: only the header is copied, and what follows it once."""
        held = self._buffer
        if held:  # the header goes on from an earlier chunk: search the octets joined
            start = max(0, len(held) - 3)
            held += data
            text: bytes | bytearray = held
        else:
            start, text = 0, data
        if text.startswith((b"\r\n", b"\n")):
            end = 0  # no header section at all
        else:
            # The first empty line, however its lines end: a bare LF is kept as sent under
            # server.bare_newline = "no" (RFC 5322 §2.1: the header ends at the first empty line).
            found = _HEAD_END.search(text, start)
            end = found.start(1) if found else -1
        if end < 0 and len(text) < MAX_HEAD:
            if text is data:
                held += data
            return b""
        if end < 0:
            end = len(text)
        if text is data:
            held += data[:end]
            rest = data[end:]
        else:
            rest = bytes(held[end:])
            del held[end:]
        self.finish()
        return rest

    def finish(self) -> None:
        """The message ended inside the header (or the header is complete)."""
        self.done = True
        self.received_count = len(_RECEIVED.findall(self._buffer))

    def completed_head(self) -> bytes:
        """The header as it will be stored, with Message-ID and Date added when asked and missing."""
        extra = b""
        if self._add:
            if not _MESSAGE_ID.search(self._buffer):
                extra += f"Message-ID: <{self._queue_id}.{uuid.uuid4().hex[:12]}@{self._hostname}>\r\n".encode()
            if not _DATE.search(self._buffer):
                extra += f"Date: {stamps.rfc5322_local(time.time())}\r\n".encode()
        head = extra + bytes(self._buffer)
        self._buffer.clear()
        found = _MESSAGE_ID_VALUE.search(head)
        if found:
            value = re.sub(rb"\r\n[ \t]", b" ", found.group(1)).strip()
            self.message_id = value.decode("utf-8", "replace")[:MAX_LOGGED_MESSAGE_ID]
        return head
