"""The Screener facade: each action on real-shaped samples, strip output, engines (fakes), logs."""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import logging
from pathlib import Path

import pytest

from mailgate.config.loader import ConfigError
from mailgate.core.reply import SCANNER_UNAVAILABLE
from mailgate.screen import Screener, ScreenContext, Verdict
from mailgate.screen.actions import STRIPPED_HEADER
from mailgate.screen.clamd import ClamdError, ScanResult
from mailgate.screen.rspamd import SpamResult
from tests.support.screening import screener_from, screener_with

DATA = Path(__file__).parent.parent / "data" / "mime"
INBOUND = ScreenContext("inbound", "anna@corp.example", ["ben@hosted.test"], "192.0.2.7", "mx.corp.example")
OUTBOUND = ScreenContext("outbound", "ben@hosted.test", ["x@far.example"], "10.0.0.5", "ws1", "ben")
BLOCK_EXE = {"name": "block-exe", "direction": "inbound", "action": "reject", "extension": ["exe", "scr"],
             "text": "Executables are not accepted"}


class CountingOpener:
    """open_message() for a sample, counting how often the message was opened."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.opened = 0

    def __call__(self) -> io.BytesIO:
        self.opened += 1
        return io.BytesIO(self.data)


def _screen(screener: Screener, sample: str | bytes, ctx: ScreenContext = INBOUND) -> tuple[Verdict, CountingOpener]:
    data = (DATA / sample).read_bytes() if isinstance(sample, str) else sample
    opener = CountingOpener(data)
    return asyncio.run(screener.screen(ctx, opener, len(data), queue_id="Q1")), opener


def _rewritten(verdict: Verdict) -> bytes:
    assert verdict.rewrite is not None
    out = bytearray()
    verdict.rewrite(out.extend)
    return bytes(out)


def test_reject_names_the_rule_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    screener = screener_from([BLOCK_EXE], {}, {})
    with caplog.at_level(logging.INFO, logger="mailgate.screen"):
        verdict, _ = _screen(screener, "outlook_mixed.eml")
    assert verdict.action == "reject" and verdict.rule == "block-exe"
    assert verdict.reply is not None
    assert verdict.reply.encode() == b"550 5.7.1 Executables are not accepted\r\n"
    assert any("verdict=reject rule=block-exe" in r.getMessage() and "queue_id=Q1" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("sample", ["outlook_mixed.eml", "apple_inline.eml", "forwarded_nested.eml",
                                    "rfc2231_names.eml"])
def test_executables_found_in_every_shape(sample: str) -> None:
    verdict, _ = _screen(screener_from([BLOCK_EXE], {}, {}), sample)
    assert verdict.action == "reject"


def test_direction_is_respected() -> None:
    verdict, opener = _screen(screener_from([BLOCK_EXE], {}, {}), "outlook_mixed.eml", OUTBOUND)
    assert verdict.action == "accept" and opener.opened == 0


def test_message_not_opened_when_no_rule_needs_it() -> None:
    rules = [{"name": "bad-sender", "direction": "both", "action": "reject", "sender_domain": ["evil.example"]}]
    screener = screener_from(rules, {}, {})
    assert not screener.needs_message(INBOUND)
    verdict, opener = _screen(screener, "outlook_mixed.eml")
    assert verdict.action == "accept" and opener.opened == 0
    evil = ScreenContext("inbound", "m@evil.example", ["ben@hosted.test"], "192.0.2.9", "evil")
    verdict, opener = _screen(screener, "outlook_mixed.eml", evil)
    assert verdict.action == "reject" and verdict.rule == "bad-sender" and opener.opened == 0


def test_envelope_rejection_skips_content_and_engines() -> None:
    clamd = FakeClamd(ScanResult(False))
    rules = [{"name": "bad-helo", "direction": "inbound", "action": "tempfail", "helo": ["^mx\\.corp"],
              "text": "Try later"}, BLOCK_EXE]
    verdict, opener = _screen(screener_with(screener_from(rules, {}, {}).rules, clamd), "outlook_mixed.eml")
    assert verdict.action == "tempfail" and verdict.reply.encode() == b"451 4.7.1 Try later\r\n"
    assert opener.opened == 0 and clamd.calls == 0


def test_strip_removes_the_part_and_keeps_the_rest_verbatim() -> None:
    rule = {**BLOCK_EXE, "action": "strip", "text": "executables are removed"}
    data = (DATA / "outlook_mixed.eml").read_bytes()
    verdict, _ = _screen(screener_from([rule], {}, {}), data)
    assert verdict.action == "strip" and verdict.rule == "block-exe"
    out = _rewritten(verdict)
    assert out.startswith(f"{STRIPPED_HEADER}: invoice.pdf.exe (rule block-exe: executables are removed)\r\n".encode())
    assert b"TVqQ" not in out  # the PE's base64 is gone
    pdf_start = data.index(b"Content-Type: application/pdf")
    pdf_end = data.index(b"------=_NextPart_000_000D", pdf_start)
    assert data[pdf_start:pdf_end] in out  # untouched parts are byte-identical
    message = email.message_from_bytes(out, policy=email.policy.default)
    leaves = [(p.get_content_type(), p.get_filename()) for p in message.walk() if not p.is_multipart()]
    assert leaves == [("text/plain", None), ("text/html", None), ("application/pdf", "Q2 report.pdf"),
                      ("text/plain", None)]
    notice = list(message.walk())[-1].get_content()
    assert '"invoice.pdf.exe"' in notice and "executables are removed" in notice


def test_strip_in_forwarded_messages_and_whole_inner_message() -> None:
    rule = {"name": "strip-exe", "direction": "inbound", "action": "strip", "extension": ["exe"]}
    verdict, _ = _screen(screener_from([rule], {}, {}), "forwarded_nested.eml")
    out = _rewritten(verdict)
    message = email.message_from_bytes(out, policy=email.policy.default)
    names = [p.get_filename() for p in message.walk() if p.get_filename()]
    assert "tool.exe" not in names and "update.exe" not in names
    notices = [p.get_content() for p in message.walk() if p.get_content_type() == "text/plain"
               and "mailgate removed" in p.get_content()]
    assert len(notices) == 2 and any("update.exe" in n for n in notices)
    assert b"Trailing note after the forward." in out and b"See the forwarded messages below." in out


def test_strip_of_a_single_part_message_replaces_the_body() -> None:
    data = (b"From: a@b.example\r\nSubject: tool\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: application/octet-stream; name=\"tool.exe\"\r\nContent-Transfer-Encoding: base64\r\n"
            b"\r\nTVqQAAMAAAAEAAAA\r\n")
    rule = {"name": "strip-exe", "direction": "inbound", "action": "strip", "sniffed_type": ["executable"]}
    out = _rewritten(_screen(screener_from([rule], {}, {}), data)[0])
    message = email.message_from_bytes(out, policy=email.policy.default)
    assert message.get_content_type() == "text/plain" and message["subject"] == "tool"
    assert "tool.exe" in message.get_content() and len(message.get_all("content-type")) == 1


def test_strip_non_ascii_name_is_encoded() -> None:
    rule = {"name": "strip-exe", "direction": "inbound", "action": "strip", "extension": ["exe", "scr"]}
    out = _rewritten(_screen(screener_from([rule], {}, {}), "rfc2231_names.eml")[0])
    message = email.message_from_bytes(out, policy=email.policy.default)
    assert "Счет.EXE" in str(message[STRIPPED_HEADER])
    notices = [p.get_content() for p in message.walk() if "mailgate removed" in (p.get_content() if
               p.get_content_maintype() == "text" else "")]
    assert any("акт № 1.pdf.scr" in n for n in notices)


def test_quarantine_tag_and_severity() -> None:
    rules = [
        {"name": "tag-zip", "direction": "both", "action": "tag", "extension": ["zip"], "text": "has a zip",
         "tag_header": "X-Has-Zip"},
        {"name": "hold-exe-in-zip", "direction": "inbound", "action": "quarantine", "extension": ["exe"],
         "in_zip": True, "text": "executable inside an archive"},
    ]
    screener = screener_from(rules, {}, {})
    verdict, _ = _screen(screener, "zip_with_exe.eml")
    assert verdict.action == "quarantine" and verdict.rule == "hold-exe-in-zip"
    assert verdict.reason == "rule hold-exe-in-zip: executable inside an archive"
    assert verdict.add_headers == [("X-Has-Zip", "has a zip")] and verdict.matched == ["tag-zip", "hold-exe-in-zip"]
    verdict, _ = _screen(screener, "zip_with_exe.eml", OUTBOUND)
    assert verdict.action == "tag" and verdict.rewrite is None


def test_keyword_rules_on_subject_and_decoded_body() -> None:
    rules = [{"name": "lottery", "direction": "inbound", "action": "reject", "subject": ["gewonnen"],
              "body": ["bestätigen sie ihre kontonummer"]}]
    assert _screen(screener_from(rules, {}, {}), "keywords.eml")[0].action == "reject"
    rules[0]["body"] = ["not in the text"]
    assert _screen(screener_from(rules, {}, {}), "keywords.eml")[0].action == "accept"


def test_subject_only_rules_read_just_the_header_section() -> None:
    rules = [{"name": "subj", "direction": "inbound", "action": "tag", "subject": ["^Q2"]}]
    verdict, _ = _screen(screener_from(rules, {}, {}), "outlook_mixed.eml")
    assert verdict.action == "tag" and verdict.add_headers == [("X-Mailgate-Tag", "subj")]


# --- engines (fakes; the real ones are in tests/integration) -----------------------------------

class FakeClamd:
    max_bytes = 1024 * 1024

    def __init__(self, result: ScanResult | Exception) -> None:
        self.result = result
        self.calls = 0

    async def scan(self, open_message):
        self.calls += 1
        with open_message() as file:
            file.read()
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class FakeRspamd:
    def __init__(self, result: SpamResult) -> None:
        self.result = result

    async def check(self, open_message, size, **envelope):
        return self.result


def test_antivirus_verdicts() -> None:
    infected = screener_with([], FakeClamd(ScanResult(True, "Eicar-Test")))
    verdict, _ = _screen(infected, "plain_clean.eml")
    assert verdict.reply.encode() == b"554 5.7.1 Message refused: virus found: Eicar-Test\r\n"
    down = screener_with([], FakeClamd(ClamdError("connection refused")))
    assert _screen(down, "plain_clean.eml")[0].reply == SCANNER_UNAVAILABLE
    fail_open = screener_with([], FakeClamd(ClamdError("connection refused")), fail_open_av=True)
    assert _screen(fail_open, "plain_clean.eml")[0].action == "accept"
    tagged = screener_with([], FakeClamd(ScanResult(True, "Eicar-Test")), av_action="tag")
    assert _screen(tagged, "plain_clean.eml")[0].add_headers == [("X-Mailgate-Virus", "Eicar-Test")]


def test_a_message_over_the_scan_limit_is_not_sent_to_clamd() -> None:
    clamd = FakeClamd(ScanResult(True, "never"))
    clamd.max_bytes = 10
    assert _screen(screener_with([], clamd), "plain_clean.eml")[0].action == "accept" and clamd.calls == 0


@pytest.mark.parametrize(("action", "ours", "code"), [
    ("reject", "reject", 554), ("soft reject", "tempfail", 451), ("greylist", "tempfail", 451),
    ("add header", "tag", None), ("no action", "accept", None),
])
def test_spam_actions_map_to_ours(action: str, ours: str, code: int | None) -> None:
    verdict, _ = _screen(screener_with([], None, FakeRspamd(SpamResult(action, 9.0, 15.0))), "plain_clean.eml")
    assert verdict.action == ours
    assert (verdict.reply.code if verdict.reply else None) == code


def test_config_errors_for_engines() -> None:
    with pytest.raises(ConfigError) as raised:  # the schema's checks
        screener_from([], {"clamd": "unix:/run/clamd.ctl", "action": "strip", "colour": 1})
    assert "antivirus.action: must be one of reject, quarantine, tag" in raised.value.errors
    assert any(error.startswith("antivirus.colour: unknown key") for error in raised.value.errors)
    with pytest.raises(ValueError) as invalid:  # what only the clients can check
        screener_from([], {"clamd": "carrier-pigeon"}, {"rspamd_url": "ftp://x"})
    text = str(invalid.value)
    for key in ("antivirus.clamd", "spam.rspamd_url"):
        assert key in text


def test_a_failing_walk_is_a_temporary_failure() -> None:
    def broken() -> io.BytesIO:
        raise OSError("spool file vanished")

    screener = screener_from([BLOCK_EXE], {}, {})
    verdict = asyncio.run(screener.screen(INBOUND, broken, 100))
    assert verdict.action == "tempfail" and verdict.rule == "screener"
    assert verdict.reply is not None and verdict.reply.code == 451
