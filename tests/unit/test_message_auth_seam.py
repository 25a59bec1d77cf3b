"""The acceptance path's use of the message-authentication seam, with the fake authenticator:
the spooled message is handed over whole, a signed or annotated copy replaces it under the same
queue id, and an authenticator that fails gives 451, never an unchecked 250."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailgate.auth.message import FakeMessageAuthenticator, InboundVerdict, Origin, REJECT
from mailgate.core.reply import LOCAL_ERROR, Reply
from mailgate.queue.spool_writer import SpoolWriter
from mailgate.server import message_auth

MESSAGE = b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n"
INTERNAL = Origin("10.0.0.5", "exchange.corp", "a@example.com", internal=True)
OUTSIDE = Origin("192.0.2.9", "mx.other", "x@other.example", internal=False)


class _Store:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.begun: list[str] = []

    def begin(self, queue_id: str | None = None) -> SpoolWriter:
        self.begun.append(queue_id or "new")
        return SpoolWriter(queue_id or "new", self.folder, 1 << 20)


def _writer(folder: Path) -> SpoolWriter:
    writer = SpoolWriter("Q1", folder, 1 << 20)
    writer.write(MESSAGE)
    return writer


def _content(writer: SpoolWriter) -> bytes:
    with writer.open_reader() as reader:
        return reader.read()


def test_internal_mail_is_replaced_by_the_signed_copy_under_the_same_id(tmp_path: Path) -> None:
    fake, store = FakeMessageAuthenticator(signature=b"DKIM-Signature: fake\r\n"), _Store(tmp_path)
    writer = _writer(tmp_path)
    verdict = asyncio.run(message_auth.check_inbound(fake, INTERNAL, writer))
    assert verdict.reply is None and fake.checked == []  # internal mail is not read for checks
    new = asyncio.run(message_auth.finish(fake, store, INTERNAL, verdict, writer))
    assert new is not writer and new.queue_id == "Q1" and store.begun == ["Q1"]
    assert _content(new) == b"DKIM-Signature: fake\r\n" + MESSAGE


def test_unchanged_message_keeps_its_writer(tmp_path: Path) -> None:
    fake, store = FakeMessageAuthenticator(), _Store(tmp_path)
    writer = _writer(tmp_path)
    assert asyncio.run(message_auth.finish(fake, store, INTERNAL, InboundVerdict(), writer)) is writer
    assert store.begun == []


def test_refusal_from_outside_is_passed_on(tmp_path: Path) -> None:
    refusal = Reply(550, "5.7.1", "no")
    fake = FakeMessageAuthenticator(InboundVerdict(REJECT, refusal, "dmarc", "p=reject"))
    verdict = asyncio.run(message_auth.check_inbound(fake, OUTSIDE, _writer(tmp_path)))
    assert verdict.reply == refusal and verdict.rule == "dmarc"


class _Broken(FakeMessageAuthenticator):
    async def check(self, message: bytes, origin: Origin) -> InboundVerdict:
        raise RuntimeError("resolver exploded")


def test_a_failing_authenticator_is_a_451_not_a_250(tmp_path: Path) -> None:
    verdict = asyncio.run(message_auth.check_inbound(_Broken(), OUTSIDE, _writer(tmp_path)))
    assert verdict.reply == LOCAL_ERROR and LOCAL_ERROR.code == 451
