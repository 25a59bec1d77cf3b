"""Applying the screener's verdict to a message in reception, before the durable commit.

Owns: calling `Screener.screen` with a reader over the spooled message, and turning its verdict
into what the session does: refuse (reject, tempfail), commit on hold (quarantine), or commit a
rewritten copy under the same queue id (strip, tag and added headers). The copy streams in
chunks in a thread, never the whole message in memory. Must not: decide anything itself
(screen/ decides) or commit (the session does, so 250 still follows the durable commit).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mailgate.core.reply import LOCAL_ERROR, Reply
from mailgate.queue.store import MessageWriter, QueueStore
from mailgate.screen import Screener, ScreenContext

COPY_CHUNK = 64 * 1024


@dataclass
class Screened:
    refusal: Reply | None  # set: refuse the message with this reply
    writer: MessageWriter  # the message to commit (the original or a rewritten copy)
    hold_reason: str = ""  # quarantine: commit on hold with this reason
    rule: str | None = None


async def screen_message(
    screener: Screener, store: QueueStore, context: ScreenContext, writer: MessageWriter
) -> Screened:
    verdict = await screener.screen(context, writer.open_reader, writer.size, queue_id=writer.queue_id)
    if verdict.action in ("reject", "tempfail"):
        return Screened(verdict.reply or LOCAL_ERROR, writer, rule=verdict.rule)
    hold_reason = f"{verdict.rule}: {verdict.reason}" if verdict.action == "quarantine" else ""
    if verdict.rewrite is None and not verdict.add_headers:
        return Screened(None, writer, hold_reason, verdict.rule)
    copy = store.begin(writer.queue_id)
    try:
        for name, value in verdict.add_headers:
            copy.write(f"{name}: {value}\r\n".encode("utf-8", "replace"))
        if verdict.rewrite is not None:
            await asyncio.to_thread(verdict.rewrite, copy.write)
        else:
            await asyncio.to_thread(_copy, writer, copy)
    except Exception:
        copy.discard()
        raise
    writer.discard()
    return Screened(None, copy, hold_reason, verdict.rule)


def _copy(source: MessageWriter, target: MessageWriter) -> None:
    with source.open_reader() as reader:
        while chunk := reader.read(COPY_CHUNK):
            target.write(chunk)
