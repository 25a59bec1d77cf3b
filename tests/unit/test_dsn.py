"""DSN generation (RFC 3464 in RFC 6522 multipart/report): parsed back with the `email` package."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

from mailgate.core.envelope import Notify
from mailgate.core.reply import Reply
from mailgate.dsn.report import (
    SUBJECT_DELAYED,
    SUBJECT_FAILED,
    FailedRecipient,
    build_dsn,
    should_send_dsn,
)

pytestmark = pytest.mark.timeout(30)

ARRIVAL = 1_800_000_000.0
NOW = ARRIVAL + 3600
# A header section the `email` generator would re-fold and re-space: it must come back untouched.
ORIGINAL_HEADERS = (
    b"Received: from client.example.org (client.example.org [192.0.2.7])\r\n"
    b"\tby mx.example.net with ESMTPS id Q1;\r\n"
    b"\tFri, 15 Jan 2027 08:00:00 +0000\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com, carol@example.com\r\n"
    b"Subject: quarterly figures " + b"and more words " * 8 + b"\r\n"
    b"X-Spacing:    three leading spaces kept   \r\n"
    b"Message-ID: <orig-1@example.org>\r\n"
    b"\r\n"
)
ORIGINAL_BODY = b"Hello Bob,\r\n\r\nthe figures are attached.\r\n.leading dot line\r\n"
ORIGINAL = ORIGINAL_HEADERS + ORIGINAL_BODY


def _failed_bob() -> FailedRecipient:
    return FailedRecipient(
        address="bob@example.com",
        orcpt="rfc822;bob+2Bsales@example.com",
        action="failed",
        status="5.1.1",
        diagnostic=Reply(550, "5.1.1", "<bob@example.com>: Recipient address rejected"),
        remote_mta="mx.example.com",
        last_attempt=NOW - 60,
        will_retry_until=None,
    )


def _delayed_carol() -> FailedRecipient:
    return FailedRecipient(
        address="carol@example.com",
        orcpt=None,
        action="delayed",
        status="4.4.1",
        diagnostic=Reply(421, "4.4.1", "Connection timed out"),
        remote_mta="dns; mx2.example.com",
        last_attempt=NOW - 30,
        will_retry_until=ARRIVAL + 5 * 86400,
    )


def _build(recipients: list[FailedRecipient], *, ret_full: bool, original: bytes = ORIGINAL,
           envid: str | None = "ENV+2B42", sender: str = "alice@example.org") -> bytes:
    return build_dsn(
        reporting_mta="mx.example.net",
        original_sender=sender,
        envid=envid,
        arrival_date=ARRIVAL,
        recipients=recipients,
        original=original,
        ret_full=ret_full,
        queue_id="Q0001",
        now=NOW,
    )


def _parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _raw_parts(raw: bytes) -> tuple[str, list[bytes]]:
    """The boundary and the raw bytes of each body part, split by hand (RFC 2046 §5.1.1)."""
    boundary = _parse(raw).get_boundary()
    assert boundary
    delimiter = b"\r\n--" + boundary.encode("ascii")
    pieces = raw.split(delimiter)
    assert pieces[-1] == b"--\r\n"
    return boundary, [piece[2:] for piece in pieces[1:-1]]  # drop the CRLF after each delimiter


def _header_and_body(part: bytes) -> tuple[bytes, bytes]:
    head, _, body = part.partition(b"\r\n\r\n")
    return head, body


def test_top_level_headers_and_structure() -> None:
    raw = _build([_failed_bob()], ret_full=True)
    message = _parse(raw)
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.example.net"
    assert message["To"].addresses[0].addr_spec == "alice@example.org"
    assert message["Subject"] == SUBJECT_FAILED
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert message["Date"].datetime.timestamp() == NOW
    assert message["Message-ID"].endswith("@mx.example.net>")
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    types = [part.get_content_type() for part in message.iter_parts()]
    assert types == ["text/plain", "message/delivery-status", "message/rfc822"]
    assert message.defects == []


def test_every_line_ends_in_crlf_and_stays_short() -> None:
    raw = _build([_failed_bob(), _delayed_carol()], ret_full=True)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))  # RFC 5322 §2.1.1


def test_per_message_fields() -> None:
    message = _parse(_build([_failed_bob()], ret_full=False))
    status = list(message.iter_parts())[1]
    groups = status.get_payload()
    per_message = groups[0]
    assert per_message["Reporting-MTA"] == "dns; mx.example.net"
    assert per_message["Original-Envelope-Id"] == "ENV+42"  # xtext decoded (RFC 3461 §4.4)
    assert per_message["Arrival-Date"] == "Fri, 15 Jan 2027 08:00:00 +0000"
    assert per_message["X-Mailgate-Queue-ID"] == "Q0001"


def test_no_envid_means_no_original_envelope_id() -> None:
    message = _parse(_build([_failed_bob()], ret_full=False, envid=None))
    per_message = list(message.iter_parts())[1].get_payload()[0]
    assert "Original-Envelope-Id" not in per_message


def test_per_recipient_fields_for_several_recipients() -> None:
    message = _parse(_build([_failed_bob(), _delayed_carol()], ret_full=False))
    groups = list(message.iter_parts())[1].get_payload()
    assert len(groups) == 3
    bob, carol = groups[1], groups[2]
    assert bob["Original-Recipient"] == "rfc822; bob+sales@example.com"
    assert bob["Final-Recipient"] == "rfc822; bob@example.com"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx.example.com"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected"
    assert bob["Last-Attempt-Date"] == "Fri, 15 Jan 2027 08:59:00 +0000"
    assert "Will-Retry-Until" not in bob
    assert "Original-Recipient" not in carol
    assert carol["Final-Recipient"] == "rfc822; carol@example.com"
    assert carol["Action"] == "delayed"
    assert carol["Status"] == "4.4.1"
    assert carol["Remote-MTA"] == "dns; mx2.example.com"
    assert carol["Diagnostic-Code"] == "smtp; 421 4.4.1 Connection timed out"
    assert carol["Last-Attempt-Date"] == "Fri, 15 Jan 2027 08:59:30 +0000"
    assert carol["Will-Retry-Until"] == "Wed, 20 Jan 2027 08:00:00 +0000"


def test_optional_recipient_fields_are_left_out_when_unknown() -> None:
    bare = FailedRecipient("dave@example.com", None, "failed", "5.4.7")
    message = _parse(_build([bare], ret_full=False))
    group = list(message.iter_parts())[1].get_payload()[1]
    assert set(group.keys()) == {"Final-Recipient", "Action", "Status"}


def test_human_part_names_each_recipient_and_reason() -> None:
    message = _parse(_build([_failed_bob(), _delayed_carol()], ret_full=False))
    text = list(message.iter_parts())[0].get_content()
    assert "<bob@example.com>" in text and "Recipient address rejected" in text
    assert "<carol@example.com>" in text and "Connection timed out" in text
    assert "Q0001" in text


def test_ret_full_returns_the_original_byte_for_byte() -> None:
    raw = _build([_failed_bob()], ret_full=True)
    _, parts = _raw_parts(raw)
    head, body = _header_and_body(parts[2])
    assert head == b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit"
    assert body == ORIGINAL
    returned = list(_parse(raw).iter_parts())[2].get_payload()[0]
    assert returned["Message-ID"] == "<orig-1@example.org>"


def test_headers_only_by_default_even_when_given_the_whole_message() -> None:
    raw = _build([_failed_bob()], ret_full=False)
    _, parts = _raw_parts(raw)
    head, body = _header_and_body(parts[2])
    assert head == b"Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: 7bit"
    assert body == ORIGINAL_HEADERS
    assert b"the figures are attached" not in raw
    assert list(_parse(raw).iter_parts())[2].get_content_type() == "text/rfc822-headers"


def test_headers_only_input_is_accepted_as_is() -> None:
    raw = _build([_failed_bob()], ret_full=False, original=ORIGINAL_HEADERS)
    _, parts = _raw_parts(raw)
    assert _header_and_body(parts[2])[1] == ORIGINAL_HEADERS


def test_eight_bit_original_is_declared_8bit_and_kept() -> None:
    original = b"Subject: caf\xc3\xa9 \xe2\x82\xac\r\n\r\nbody \xff\xfe raw\r\n"
    raw = _build([_failed_bob()], ret_full=True, original=original)
    _, parts = _raw_parts(raw)
    head, body = _header_and_body(parts[2])
    assert head == b"Content-Type: message/global\r\nContent-Transfer-Encoding: 8bit"
    assert body == original


def test_bare_lf_original_is_made_crlf() -> None:
    raw = _build([_failed_bob()], ret_full=True, original=b"Subject: x\n\nline\n")
    _, parts = _raw_parts(raw)
    assert _header_and_body(parts[2])[1] == b"Subject: x\r\n\r\nline\r\n"


def test_delayed_variant() -> None:
    raw = _build([_delayed_carol()], ret_full=False)
    message = _parse(raw)
    assert message["Subject"] == SUBJECT_DELAYED
    group = list(message.iter_parts())[1].get_payload()[1]
    assert group["Action"] == "delayed"
    assert "Will-Retry-Until" in group
    assert "still trying" in list(message.iter_parts())[0].get_content()


def test_boundary_never_appears_in_the_original() -> None:
    first = _build([_failed_bob()], ret_full=True)
    boundary, _ = _raw_parts(first)
    hostile = ORIGINAL_HEADERS + b"--" + boundary.encode() + b"\r\n"
    raw = _build([_failed_bob()], ret_full=True, original=hostile)
    new_boundary, parts = _raw_parts(raw)
    assert new_boundary != boundary
    assert len(parts) == 3
    assert _header_and_body(parts[2])[1] == hostile


def test_diagnostic_text_cannot_inject_fields() -> None:
    hostile = FailedRecipient("bob@example.com", None, "failed", "5.0.0",
                              Reply(550, "5.0.0", "no\rAction: delivered"))
    group = list(_parse(_build([hostile], ret_full=False)).iter_parts())[1].get_payload()[1]
    assert group["Action"] == "failed"
    assert group["Diagnostic-Code"] == "smtp; 550 5.0.0 no Action: delivered"


def test_long_diagnostic_is_folded_and_unfolds_intact() -> None:
    text = "mailbox unavailable " + "because of a very long explanation " * 6
    item = FailedRecipient("bob@example.com", None, "failed", "5.2.1", Reply(550, "5.2.1", text.strip()))
    raw = _build([item], ret_full=False)
    group = list(_parse(raw).iter_parts())[1].get_payload()[1]
    assert group["Diagnostic-Code"] == f"smtp; 550 5.2.1 {text.strip()}"
    assert b"Diagnostic-Code: smtp; 550 5.2.1 mailbox unavailable because" in raw
    assert max(len(line) for line in raw.split(b"\r\n") if b"explanation" in line) <= 78


def test_utf8_addresses_use_global_delivery_status() -> None:
    item = FailedRecipient("jörg+x@bücher.example", None, "failed", "5.1.1")
    raw = _build([item], ret_full=False, sender="ünal@example.org")
    message = _parse(raw)
    assert message.get_param("report-type") == "global-delivery-status"
    assert "\r\nTo: <ünal@example.org>\r\n".encode() in raw  # RFC 6532 §3.2: UTF-8 header
    _, parts = _raw_parts(raw)
    head, body = _header_and_body(parts[1])
    assert head == b"Content-Type: message/global-delivery-status\r\nContent-Transfer-Encoding: 8bit"
    # RFC 6533 §3: "+" is written \x{2B}, the UTF-8 characters stay as they are.
    assert "Final-Recipient: utf-8; jörg\\x{2B}x@bücher.example\r\n".encode() in body


def test_invalid_input_is_refused() -> None:
    with pytest.raises(ValueError):
        FailedRecipient("bob@example.com", None, "bounced", "5.1.1")
    with pytest.raises(ValueError):
        FailedRecipient("bob@example.com", None, "failed", "550")
    with pytest.raises(ValueError):
        _build([], ret_full=False)


@pytest.mark.parametrize("sender", [None, "", "<>", " <> "])
def test_never_a_dsn_to_the_null_sender(sender: str | None) -> None:
    assert not should_send_dsn(sender)
    assert not should_send_dsn(sender, action="delayed")


def test_notify_decides_for_a_real_sender() -> None:
    assert should_send_dsn("alice@example.org")
    assert should_send_dsn("alice@example.org", action="delayed")
    assert not should_send_dsn("alice@example.org", action="delivered")
    assert should_send_dsn("alice@example.org", action="delivered", notify=(Notify.SUCCESS,))
    assert not should_send_dsn("alice@example.org", notify=(Notify.NEVER,))
    assert not should_send_dsn("alice@example.org", action="delayed", notify=(Notify.FAILURE,))
    with pytest.raises(ValueError):
        should_send_dsn("alice@example.org", action="bounced")
