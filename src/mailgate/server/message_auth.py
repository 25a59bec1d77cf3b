"""Message authentication on the acceptance path, between end of data and the durable commit.

Owns: reading the spooled message for the authenticator (in a thread, never on the event loop),
the `Origin` of a message, and replacing the spooled message by the authenticator's result under
the same queue id (DKIM-Signature fields for internal mail, over its wire form: long lines
already broken and line endings CRLF, so delivery changes no signed byte; Authentication-Results
for mail from outside). Inbound checks run before the screener, on the bytes the sender signed; signing and
the results header come after it, on what will be stored (docs/flow.md). A failure of the
authenticator is a 451 (the sender retries), never an unsigned or unchecked 250.
Must not: decide anything (auth/ decides) or commit (the session does).
"""

from __future__ import annotations

import asyncio
import logging

from mailgate.auth.message import NOT_CHECKED, TEMPFAIL, InboundVerdict, MessageAuthenticator, Origin
from mailgate.core.reply import LOCAL_ERROR
from mailgate.queue.store import MessageWriter, QueueStore
from mailgate.smtp.line_wrap import wire_form

log = logging.getLogger("mailgate.auth")

AUTH_FAILED = InboundVerdict(action=TEMPFAIL, reply=LOCAL_ERROR, rule="authentication", reason="checks failed")


def _read(writer: MessageWriter) -> bytes:
    with writer.open_reader() as reader:
        return reader.read()


async def check_inbound(authenticator: MessageAuthenticator, origin: Origin, writer: MessageWriter) -> InboundVerdict:
    """The inbound verdict (before the screener); internal mail is not checked (nor read)."""
    if origin.internal:
        return NOT_CHECKED
    try:
        return await authenticator.check(await asyncio.to_thread(_read, writer), origin)
    except Exception:
        log.exception("message authentication failed")
        return AUTH_FAILED


async def finish(
    authenticator: MessageAuthenticator, store: QueueStore, origin: Origin, verdict: InboundVerdict,
    writer: MessageWriter,
) -> MessageWriter:
    """The writer to commit: `writer`, or a new one holding the signed or annotated message.
    Raises what the authenticator raised; the session answers 451 then."""
    if origin.internal:
        # Reading, the wire form, signing and storing are all CPU or local file work: one thread.
        return await asyncio.to_thread(_signed, authenticator, store, writer)
    message = await authenticator.finish(await asyncio.to_thread(_read, writer), verdict)
    if message is None:
        return writer
    return await asyncio.to_thread(_replaced, store, writer, message)


def _signed(authenticator: MessageAuthenticator, store: QueueStore, writer: MessageWriter) -> MessageWriter:
    stored = _read(writer)
    # A signature must hold on the delivered bytes: internal mail is signed in its wire form
    # (long lines broken, bare CR/LF made CRLF, as delivery would), and stored so.
    unsigned = wire_form(stored)
    message = authenticator.sign(unsigned)
    if message is None:
        if unsigned == stored:
            return writer
        message = unsigned
    return _replaced(store, writer, message)


def _replaced(store: QueueStore, writer: MessageWriter, message: bytes) -> MessageWriter:
    """`message` in a new writer under the same queue id; `writer` is discarded."""
    copy = store.begin(writer.queue_id)
    try:
        copy.write(message)
    except Exception:
        copy.discard()
        raise
    writer.discard()
    return copy
