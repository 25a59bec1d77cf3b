"""The rspamd client and the screener's spam step: against the real rspamd (Debian's rspamd
3.4, started privately with a minimal configuration) and against a scripted HTTP peer for the
protocol corners (chunked answers, errors, silence)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from mailgate.core.reply import SCANNER_UNAVAILABLE
from mailgate.screen import Screener, ScreenContext
from mailgate.screen.rspamd import RspamdClient, RspamdError
from tests.conftest import free_port, require_binary
from tests.support.rspamd import (
    GTUBE_ADD_HEADER, GTUBE_REJECT, GTUBE_REWRITE_SUBJECT, SPAM_SUBJECT_PREFIX, TEST_SUBJECT_PREFIX,
    RspamdInstance, start_rspamd,
)
from tests.support.screening import scanner_defaults, screener_from, screener_with

pytestmark = pytest.mark.timeout(120)

CTX = ScreenContext("inbound", "promo@spam.example", ["ben@hosted.test"], "192.0.2.7", "spam.example")


def _message(subject: str, body: str = "hello") -> bytes:
    return (f"From: promo@spam.example\r\nTo: ben@hosted.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <t@spam.example>\r\n\r\n{body}\r\n").encode()


def _screen(screener: Screener, message: bytes):
    return asyncio.run(screener.screen(CTX, lambda: io.BytesIO(message), len(message), queue_id="Q1"))


@pytest.fixture(scope="module")
def rspamd() -> Iterator[RspamdInstance]:
    binary = require_binary("rspamd")
    with start_rspamd(binary, free_port()) as instance:
        yield instance


@pytest.mark.e2e
def test_clean_message_is_accepted(rspamd: RspamdInstance) -> None:
    screener = screener_from([], {}, {"rspamd_url": rspamd.url})
    verdict = _screen(screener, _message("lunch"))
    assert verdict.action == "accept" and verdict.add_headers == []


@pytest.mark.e2e
def test_gtube_is_rejected_with_554(rspamd: RspamdInstance, caplog: pytest.LogCaptureFixture) -> None:
    screener = screener_from([], {}, {"rspamd_url": rspamd.url})
    with caplog.at_level(logging.INFO, logger="mailgate.screen"):
        verdict = _screen(screener, _message("offer", GTUBE_REJECT))
    assert verdict.action == "reject" and verdict.rule == "rspamd"
    assert verdict.reply is not None and (verdict.reply.code, verdict.reply.enhanced) == (554, "5.7.1")
    assert any("verdict=reject rule=rspamd" in record.getMessage() for record in caplog.records)


@pytest.mark.e2e
def test_add_header_tags_the_message(rspamd: RspamdInstance) -> None:
    verdict = _screen(screener_from([], {}, {"rspamd_url": rspamd.url}),
                      _message("offer", GTUBE_ADD_HEADER))
    assert verdict.action == "tag" and verdict.rewrite is None
    assert ("X-Spam", "Yes") in verdict.add_headers


@pytest.mark.e2e
def test_rewrite_subject_rewrites_the_subject(rspamd: RspamdInstance) -> None:
    message = _message("offer", GTUBE_REWRITE_SUBJECT)
    verdict = _screen(screener_from([], {}, {"rspamd_url": rspamd.url}), message)
    assert verdict.action == "tag" and verdict.rewrite is not None
    out = bytearray()
    verdict.rewrite(out.extend)
    assert f"Subject: {SPAM_SUBJECT_PREFIX}offer\r\n".encode() in out
    assert out.count(b"Subject:") == 1
    assert out.endswith(b"\r\n\r\n" + GTUBE_REWRITE_SUBJECT.encode() + b"\r\n")


@pytest.mark.e2e
@pytest.mark.parametrize("action", ["soft reject", "greylist"])
def test_soft_reject_and_greylist_are_temporary(rspamd: RspamdInstance, action: str) -> None:
    verdict = _screen(screener_from([], {}, {"rspamd_url": rspamd.url}),
                      _message(TEST_SUBJECT_PREFIX + action))
    assert verdict.action == "tempfail"
    assert verdict.reply is not None and (verdict.reply.code, verdict.reply.enhanced) == (451, "4.7.1")


@pytest.mark.e2e
def test_client_sends_the_envelope_and_reads_the_score(rspamd: RspamdInstance) -> None:
    client = RspamdClient(rspamd.url, timeout=30)
    message = _message(TEST_SUBJECT_PREFIX + "reject")
    result = asyncio.run(client.check(lambda: io.BytesIO(message), len(message), sender="a@b.example",
                                      recipients=["c@hosted.test", "d@hosted.test"],
                                      client_address="192.0.2.1", helo="b.example"))
    assert result.action == "reject" and result.message == "mailgate test: reject"


# --- a scripted HTTP peer ----------------------------------------------------------------------

class ScriptedPeer:
    """Answers every request with `response`, recording what it was sent."""

    def __init__(self, response: bytes | None) -> None:
        self.response = response
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        self.requests.append(head + await reader.readexactly(length))
        if self.response is None:
            await asyncio.sleep(2)
        else:
            writer.write(self.response)
            await writer.drain()
        writer.close()


def _with_peer(response: bytes | None, action) -> tuple[object, ScriptedPeer]:
    peer = ScriptedPeer(response)

    async def run() -> object:
        server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await action(f"http://127.0.0.1:{port}")
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(run()), peer


def _chunked(body: bytes) -> bytes:
    middle = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:middle], body[middle:]))
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


def test_chunked_answer_and_request_headers() -> None:
    answer = json.dumps({"action": "add header", "score": 7.5, "required_score": 15,
                         "symbols": {"B": {}, "A": {}},
                         "milter": {"add_headers": {"X-Spamd-Bar": {"value": "+++++++", "order": 0}}}})
    message = _message("x")

    async def action(url: str):
        return await RspamdClient(url, timeout=scanner_defaults("spam").timeout).check(lambda: io.BytesIO(message), len(message),
                                             sender="a@b.example", recipients=["c@d.test", "e@f.test"],
                                             client_address="192.0.2.1", helo="b.example", user="alice")

    result, peer = _with_peer(_chunked(answer.encode()), action)
    assert result.action == "add header" and result.score == 7.5 and result.symbols == ("A", "B")
    assert result.milter_headers == (("X-Spamd-Bar", "+++++++"),)
    request = peer.requests[0]
    assert request.startswith(b"POST /checkv2 HTTP/1.1\r\n")
    for header in (b"From: a@b.example", b"Rcpt: c@d.test", b"Rcpt: e@f.test", b"IP: 192.0.2.1",
                   b"Helo: b.example", b"User: alice"):
        assert header + b"\r\n" in request
    assert request.endswith(b"\r\n\r\n" + message)


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!",
    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!",
    b"garbage\r\n\r\n",
])
def test_bad_answers_are_errors_and_tempfail_the_message(response: bytes) -> None:
    message = _message("x")

    async def action(url: str):
        screener = screener_from([], {}, {"rspamd_url": url})
        return await screener.screen(CTX, lambda: io.BytesIO(message), len(message))

    verdict, _ = _with_peer(response, action)
    assert verdict.action == "tempfail" and verdict.reply == SCANNER_UNAVAILABLE


def test_silent_rspamd_times_out_and_fail_open_accepts() -> None:
    message = _message("x")

    async def action(url: str):
        client = RspamdClient(url, timeout=0.3)
        with pytest.raises(RspamdError, match="timed out"):
            await client.check(lambda: io.BytesIO(message), len(message), sender="", recipients=[],
                               client_address="192.0.2.1", helo="h")
        screener = screener_with([], None, client, fail_open_spam=True)  # under the schema's 1 s minimum
        return await screener.screen(CTX, lambda: io.BytesIO(message), len(message))

    verdict, _ = _with_peer(None, action)
    assert verdict.action == "accept"
