"""The screener past its bounds (issue 13 item 2, issue 21 item 3): what it could not inspect never
passes a rule unseen; one time limit over the whole screening; regexes that backtrack forever stop;
the walk runs on threads of its own, apart from the password checks."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
import zipfile

import pytest

from mailgate.screen import Screener, ScreenContext, Verdict
from mailgate.screen import archives, mime
from mailgate.screen.clamd import ScanResult
from tests.support.screening import screener_from, screener_with

pytestmark = pytest.mark.timeout(120)

INBOUND = ScreenContext("inbound", "anna@corp.example", ["ben@hosted.test"], "192.0.2.7", "mx.corp.example")
EXE_IN_ZIP = {"name": "exe-in-zip", "direction": "inbound", "action": "reject", "extension": ["exe"],
              "in_zip": True, "text": "Executables are not accepted"}
EXE_BY_CONTENT = {"name": "exe-content", "direction": "inbound", "action": "reject",
                  "sniffed_type": ["executable"], "in_zip": True}
PE = b"MZ" + b"\0" * 200


def _part(name: str, payload: bytes, content_type: str = "application/octet-stream") -> bytes:
    body = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (f'Content-Type: {content_type}; name="{name}"\r\nContent-Transfer-Encoding: base64\r\n'
            f'Content-Disposition: attachment; filename="{name}"\r\n\r\n').encode() + body


def nested_mime(depth: int, leaf: bytes) -> bytes:
    """`leaf` inside `depth` levels of multipart/mixed, then the message header."""
    entity = leaf
    for level in range(depth):
        boundary = f"b{level}".encode()
        entity = (b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n--" + boundary
                  + b"\r\n" + entity + b"\r\n--" + boundary + b"--\r\n")
    return b"From: a@corp.example\r\nSubject: nest\r\nMIME-Version: 1.0\r\n" + entity


def nested_zip(depth: int) -> bytes:
    """evil.exe in a zip, inside `depth` more zips."""
    data, name = PE, "evil.exe"
    for level in range(depth + 1):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(name, data)
        data, name = buffer.getvalue(), f"layer{level}.zip"
    return data


def screen(screener: Screener, data: bytes) -> Verdict:
    return asyncio.run(screener.screen(INBOUND, lambda: io.BytesIO(data), len(data), queue_id="Q1"))


@pytest.mark.parametrize("depth", [1, 20, 31, 33, 50, 100, 3000])
def test_an_exe_at_any_mime_depth_is_refused(depth: int, caplog: pytest.LogCaptureFixture) -> None:
    data = nested_mime(depth, _part("evil.exe", PE))
    with caplog.at_level(logging.INFO, logger="mailgate.screen"):
        verdict = screen(screener_from([EXE_IN_ZIP], {}, {}), data)
    assert verdict.action == "reject" and verdict.rule == "exe-in-zip"
    if depth > mime.MAX_NESTING:
        assert verdict.reply is not None and verdict.reply.encode() == b"550 5.7.1 Message could not be fully inspected\r\n"
        assert "not fully inspected (MIME nesting deeper than 32)" in verdict.reason
        assert any("not fully inspected" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("rule", [EXE_IN_ZIP, EXE_BY_CONTENT], ids=["by-name", "by-content"])
@pytest.mark.parametrize("depth", range(6))
def test_an_exe_at_any_zip_depth_is_refused(depth: int, rule: dict) -> None:
    data = nested_mime(1, _part("archive.zip", nested_zip(depth), "application/zip"))
    verdict = screen(screener_from([rule], {}, {}), data)
    assert verdict.action == "reject", verdict.reason
    assert ("not fully inspected" in verdict.reason) == (depth >= archives.MAX_DEPTH)


def test_past_the_entity_limit_the_rest_is_not_passed_unseen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mime, "MAX_ENTITIES", 50)
    parts = b"".join(b"--m\r\nContent-Type: text/plain\r\n\r\nfiller\r\n" for _ in range(60))
    data = (b"Subject: many\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n" + parts
            + b"--m\r\n" + _part("evil.exe", PE) + b"\r\n--m--\r\n")
    verdict = screen(screener_from([EXE_IN_ZIP], {}, {}), data)
    assert verdict.action == "reject" and "more than 50 MIME entities" in verdict.reason


def test_a_strip_rule_strips_what_it_could_not_inspect() -> None:
    strip = dict(EXE_IN_ZIP, action="strip")
    data = nested_mime(1, _part("archive.zip", nested_zip(archives.MAX_DEPTH + 1), "application/zip"))
    verdict = screen(screener_from([strip], {}, {}), data)
    assert verdict.action == "strip" and verdict.rewrite is not None
    out = bytearray()
    verdict.rewrite(out.extend)
    assert b"archive.zip" not in out.split(b"\r\n\r\n", 1)[1] and b"not fully inspected" in out


def test_the_uninspected_action_is_configurable() -> None:
    data = nested_mime(40, _part("evil.exe", PE))
    tempfail = screener_from([EXE_IN_ZIP], {}, {}, {"uninspected_action": "tempfail"})
    verdict = screen(tempfail, data)
    assert verdict.action == "tempfail" and verdict.reply is not None and verdict.reply.code == 451
    quarantine = screener_from([EXE_IN_ZIP], {}, {}, {"uninspected_action": "quarantine"})
    assert screen(quarantine, data).action == "quarantine"


def test_what_no_rule_could_have_matched_passes() -> None:
    """A zip too deep is no reason to refuse when no rule looks inside zips; a rule refuted by a
    key that was seen (the subject) does not decide either."""
    outside_zip_only = dict(EXE_IN_ZIP, in_zip=False)
    data = nested_mime(1, _part("archive.zip", nested_zip(5), "application/zip"))
    assert screen(screener_from([outside_zip_only], {}, {}), data).action == "accept"
    with_subject = dict(EXE_IN_ZIP, subject=["^invoice"])
    assert screen(screener_from([with_subject], {}, {}), data).action == "accept"


def test_a_catastrophic_regex_stops_at_the_time_limit() -> None:
    rule = {"name": "backtrack", "direction": "inbound", "action": "reject", "body": ["(a|aa)+$"]}
    data = b"Subject: x\r\n\r\n" + b"a" * 5000 + b"!\r\n"
    verdict = screen(screener_from([rule], {}, {}, {"time_limit": 1}), data)
    assert verdict.action == "reject" and verdict.rule == "backtrack"
    assert "not fully inspected" in verdict.reason


def test_a_catastrophic_helo_regex_does_not_hold_the_event_loop() -> None:
    rule = {"name": "helo", "direction": "inbound", "action": "tempfail", "helo": ["^(a|aa)+$"]}
    ctx = ScreenContext("inbound", "", ["ben@hosted.test"], "192.0.2.7", "a" * 5000 + "!")
    screener = screener_from([rule], {}, {})
    verdict = asyncio.run(screener.screen(ctx, lambda: io.BytesIO(b""), 0))
    assert verdict.action == "tempfail" and "not fully inspected" in verdict.reason


def test_past_the_time_limit_rules_decide_as_if_matched() -> None:
    screener = screener_from([EXE_IN_ZIP], {}, {})
    screener.time_limit = 0  # already over when screening starts
    verdict = screen(screener, nested_mime(1, _part("clean.txt", b"hello")))
    assert verdict.action == "reject" and "time limit" in verdict.reason


class StalledClamd:
    address = "unix:/stalled"
    max_bytes = 1 << 30

    async def scan(self, open_message):
        await asyncio.sleep(3600)
        return ScanResult(False)


def test_a_scanner_still_running_at_the_time_limit_is_a_tempfail() -> None:
    screener = screener_with([], StalledClamd(), time_limit=0.2)  # type: ignore[arg-type]
    verdict = screen(screener, b"Subject: x\r\n\r\nhello\r\n")
    assert verdict.action == "tempfail" and verdict.reply is not None and verdict.reply.code == 451
    assert "not fully inspected" in verdict.reason


def test_screening_does_not_wait_for_the_threads_that_check_passwords() -> None:
    """Password checks (argon2) run on asyncio's default executor; with every one of its threads
    busy, a message is still screened."""
    release = threading.Event()

    async def main() -> Verdict:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(__import__("concurrent.futures").futures.ThreadPoolExecutor(max_workers=2))
        busy = [asyncio.to_thread(release.wait, 60) for _ in range(4)]
        tasks = [asyncio.ensure_future(job) for job in busy]
        try:
            data = nested_mime(2, _part("evil.exe", PE))
            return await asyncio.wait_for(
                screener_from([EXE_IN_ZIP], {}, {}).screen(INBOUND, lambda: io.BytesIO(data), len(data)), 30)
        finally:
            release.set()
            await asyncio.gather(*tasks)

    assert asyncio.run(main()).action == "reject"
