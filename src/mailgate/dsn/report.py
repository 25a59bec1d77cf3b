"""Delivery status notifications: the RFC 3464 report a sender gets for failed or delayed mail.

Owns: `FailedRecipient` (one per-recipient group), `build_dsn` (a complete RFC 5322 message,
multipart/report per RFC 6522, CRLF line endings) and `should_send_dsn` (never a bounce to the
null reverse-path <>, RFC 5321 §6.1 and §4.5.5; NOTIFY per RFC 3461 §4.1).
Must not: read the queue, send mail, or decide retry versus bounce (`core.status.classify` does).

Why hand-written and not `email.message.EmailMessage`: the `email` generator re-serialises an
attached message/rfc822 part, which re-folds long headers and drops leading white space of header
values. RFC 3462/6522 want the returned message as it was, so the parts are composed here from
bytes; `email.utils` still formats the dates. The returned original is kept byte for byte (only a
bare LF, which the server never accepts, is turned into CRLF so the DSN itself stays valid).

RET (RFC 3461 §4.3): `ret_full=False` is the default when the client gave no RET; it returns
the headers only (text/rfc822-headers, RFC 6522 §4), so a bounce never carries a whole message
back to an address that may be forged. The caller may pass the whole original either way; the
headers are cut here when `ret_full` is false.

SMTPUTF8 (RFC 6533): when any address or text is not ASCII the report uses
message/global-delivery-status with `utf-8;` address types (RFC 6533 §3, §6.1) and, for the
original, message/global or message/global-headers (RFC 6532 §3.7, RFC 6533 §6.3). Such a DSN
must then be sent with SMTPUTF8 (the caller checks `dsn.isascii()`).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime

from mailgate.core.envelope import DEFAULT_NOTIFY, Notify
from mailgate.core.reply import Reply

# RFC 3464 §2.3.3: the values of the Action field.
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
_SUCCESS_ACTIONS = frozenset({"delivered", "relayed", "expanded"})
# RFC 3463 §2: class "." subject "." detail; class 2, 4 or 5, subject and detail 1-3 digits.
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
# RFC 3461 §4: xtext "+" followed by two upper-case hex digits encodes one octet.
_XTEXT_ESCAPE = re.compile(rb"\+([0-9A-F]{2})")
# RFC 5322 §2.1.1: lines SHOULD stay within 78 characters; fields are folded at white space.
_FOLD_WIDTH = 78
# RFC 2046 §5.1.1: a boundary is at most 70 characters from bchars.
_BOUNDARY_UNSAFE = re.compile(r"[^0-9A-Za-z'()+_,\-./:=?]")

SUBJECT_FAILED = "Undelivered Mail Returned to Sender"
SUBJECT_DELAYED = "Delayed Mail (still being retried)"
SUBJECT_DELIVERED = "Successful Mail Delivery Report"


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    """One recipient's per-recipient group (RFC 3464 §2.3).

    `orcpt` is the ORCPT parameter as received ("rfc822;a+2Bb@example.com", xtext, RFC 3461
    §4.2); `remote_mta` is a host name or an already typed "dns; host"; times are epoch seconds.
    """

    address: str
    orcpt: str | None
    action: str
    status: str
    diagnostic: Reply | None = None
    remote_mta: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown DSN action {self.action!r} (RFC 3464 §2.3.3)")
        if not _STATUS.fullmatch(self.status):
            raise ValueError(f"bad status code {self.status!r} (RFC 3463 §2)")


def should_send_dsn(
    sender: str | None,
    *,
    action: str = "failed",
    notify: tuple[Notify, ...] = DEFAULT_NOTIFY,
) -> bool:
    """Whether a DSN of this `action` goes to `sender`.

    Never for the null reverse-path (None, "" or "<>"): a bounce is never bounced (RFC 5321 §6.1,
    RFC 3464 §4). Otherwise the recipient's NOTIFY decides (RFC 3461 §4.1): failed needs FAILURE,
    delayed needs DELAY, delivered/relayed/expanded need SUCCESS, and NEVER silences all.
    """
    if sender is None or sender.strip() in ("", "<>"):
        return False
    if Notify.NEVER in notify:
        return False
    if action == "failed":
        return Notify.FAILURE in notify
    if action == "delayed":
        return Notify.DELAY in notify
    if action in _SUCCESS_ACTIONS:
        return Notify.SUCCESS in notify
    raise ValueError(f"unknown DSN action {action!r} (RFC 3464 §2.3.3)")


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    envid: str | None,
    arrival_date: float,
    recipients: list[FailedRecipient],
    original: bytes,
    ret_full: bool,
    queue_id: str,
    now: float,
    postmaster: str | None = None,
) -> bytes:
    """The complete DSN message (RFC 3464 inside RFC 6522 multipart/report), CRLF line endings.

    `postmaster` defaults to MAILER-DAEMON@<reporting_mta>. `envid` is the ENVID parameter as
    received (xtext, RFC 3461 §4.4). The message goes out from the null reverse-path <>.
    """
    if not recipients:
        raise ValueError("a DSN needs at least one per-recipient group (RFC 3464 §2.1)")
    reporting_host = _untyped(reporting_mta)
    sender_box = postmaster or f"MAILER-DAEMON@{reporting_host}"
    returned = _with_crlf(original if ret_full else _headers_only(original))
    envid_text = _xtext_decode(envid) if envid else None
    global_report = not _all_ascii(original_sender, envid_text, *_recipient_texts(recipients))
    status_part = _delivery_status(reporting_host, envid_text, arrival_date, recipients, queue_id)
    human_part = _human_text(reporting_host, queue_id, recipients).encode("utf-8")
    boundary = _boundary(queue_id, now, [returned, status_part, human_part])
    report_type = "global-delivery-status" if global_report else "delivery-status"

    headers = [
        f"From: Mail Delivery System <{sender_box}>",
        f"To: <{_clean(_bare(original_sender))}>",
        f"Subject: {_subject(recipients)}",
        f"Date: {_date(now)}",
        f"Message-ID: <dsn.{_token(queue_id)}.{int(now * 1000)}@{reporting_host}>",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type={report_type};\r\n\tboundary="{boundary}"',
    ]
    out = bytearray("\r\n".join(headers).encode("utf-8"))
    out += b"\r\n\r\nThis is a MIME-encapsulated delivery status notification.\r\n"
    out += _part(boundary, _text_headers(human_part), human_part)
    status_type = "message/global-delivery-status" if global_report else "message/delivery-status"
    status_headers = [f"Content-Type: {status_type}"]
    if not status_part.isascii():
        status_headers.append("Content-Transfer-Encoding: 8bit")  # RFC 6533 §6.1
    out += _part(boundary, status_headers, status_part)
    out += _part(boundary, _original_headers(returned, ret_full), returned)
    out += f"--{boundary}--\r\n".encode("ascii")
    return bytes(out)


# --- The machine-readable part (RFC 3464 §2.2, §2.3) ---------------------------------------------


def _delivery_status(
    reporting_host: str,
    envid: str | None,
    arrival_date: float,
    recipients: list[FailedRecipient],
    queue_id: str,
) -> bytes:
    message_fields = [f"Reporting-MTA: dns; {reporting_host}", f"X-Mailgate-Queue-ID: {_clean(queue_id)}"]
    if envid:
        message_fields.append(f"Original-Envelope-Id: {_clean(envid)}")
    message_fields.append(f"Arrival-Date: {_date(arrival_date)}")
    groups = [message_fields] + [_recipient_fields(item) for item in recipients]
    # RFC 3464 §2.1: groups are separated by one blank line, each field ends in CRLF.
    return b"\r\n".join("".join(_fold(field) + "\r\n" for field in group).encode("utf-8")
                       for group in groups)


def _recipient_fields(item: FailedRecipient) -> list[str]:
    fields = []
    if item.orcpt:
        address_type, address = _split_orcpt(item.orcpt)
        fields.append(f"Original-Recipient: {address_type}; {_clean(address)}")
    fields.append(f"Final-Recipient: {_typed_address(_bare(item.address))}")
    fields.append(f"Action: {item.action}")
    fields.append(f"Status: {item.status}")
    if item.remote_mta:
        fields.append(f"Remote-MTA: dns; {_untyped(item.remote_mta)}")
    if item.diagnostic is not None:
        fields.append(f"Diagnostic-Code: smtp; {_diagnostic_text(item.diagnostic)}")
    if item.last_attempt is not None:
        fields.append(f"Last-Attempt-Date: {_date(item.last_attempt)}")
    if item.action == "delayed" and item.will_retry_until is not None:
        fields.append(f"Will-Retry-Until: {_date(item.will_retry_until)}")
    return fields


def _typed_address(address: str) -> str:
    """`rfc822; addr`, or RFC 6533 §3 `utf-8; addr` with its unitext escapes."""
    if address.isascii():
        return f"rfc822; {address}"
    # RFC 6533 §3 utf-8-addr-unitext: QUCHAR is any non-control character other than
    # "+", "=", "\" and space; everything else is written as \x{HEX}.
    escaped = "".join(
        f"\\x{{{ord(char):X}}}" if char in "+=\\ " or ord(char) < 0x21 or ord(char) == 0x7F else char
        for char in address
    )
    return f"utf-8; {escaped}"


def _split_orcpt(orcpt: str) -> tuple[str, str]:
    """ORCPT "type;xtext" → (type, decoded address) (RFC 3461 §4.2, RFC 3464 §2.3.1)."""
    address_type, separator, encoded = orcpt.partition(";")
    if not separator:
        return "rfc822", orcpt.strip()
    if address_type.strip().lower() == "utf-8":
        return "utf-8", encoded.strip()  # RFC 6533 §3: already in its own encoding
    return address_type.strip().lower(), _xtext_decode(encoded.strip())


def _xtext_decode(text: str) -> str:
    raw = _XTEXT_ESCAPE.sub(lambda match: bytes([int(match.group(1), 16)]), text.encode("utf-8"))
    return raw.decode("utf-8", "replace")


def _diagnostic_text(reply: Reply) -> str:
    """RFC 3464 §2.3.6 smtp diagnostic: "550 5.1.1 text", a multi-line reply on one line."""
    text = " ".join(line.strip() for line in reply.text.split("\n") if line.strip())
    parts = [str(reply.code), reply.enhanced, text]
    return _clean(" ".join(part for part in parts if part))


# --- The human-readable part (RFC 6522 §3, first part) -------------------------------------------


def _human_text(reporting_host: str, queue_id: str, recipients: list[FailedRecipient]) -> str:
    lines = [f"This is the mail system at host {reporting_host}.", ""]
    failed = [item for item in recipients if item.action == "failed"]
    delayed = [item for item in recipients if item.action == "delayed"]
    succeeded = [item for item in recipients if item.action in _SUCCESS_ACTIONS]
    if failed:
        lines += ["Your message could not be delivered to the following recipients.",
                  "It will not be retried for them.", ""]
        lines += _explain(failed)
    if delayed:
        lines += ["Delivery to the following recipients has been delayed.",
                  "The mail system is still trying; you do not need to send the message again.", ""]
        lines += _explain(delayed)
    if succeeded:
        lines += ["Your message was delivered to the following recipients.", ""]
        lines += _explain(succeeded)
    lines += [f"Queue id: {queue_id}", ""]
    return "\r\n".join(lines)


def _explain(recipients: list[FailedRecipient]) -> list[str]:
    lines = []
    for item in recipients:
        lines.append(f"<{_bare(item.address)}>:")
        where = f" (while talking to {_untyped(item.remote_mta)})" if item.remote_mta else ""
        reason = _diagnostic_text(item.diagnostic) if item.diagnostic else f"status {item.status}"
        lines += textwrap.wrap(reason + where, _FOLD_WIDTH - 2, initial_indent="    ",
                               subsequent_indent="    ", break_on_hyphens=False)
        if item.action == "delayed" and item.will_retry_until is not None:
            lines.append(f"    The mail system will keep trying until {_date(item.will_retry_until)}.")
        lines.append("")
    return lines


def _text_headers(body: bytes) -> list[str]:
    if body.isascii():
        return ["Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit"]
    return ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]


# --- The returned original (RFC 6522 §3 third part, RFC 3462) ------------------------------------


def _headers_only(message: bytes) -> bytes:
    """The header section up to and including its terminating empty line (RFC 5322 §2.1)."""
    match = re.search(rb"\r?\n\r?\n", message)
    if match is None:
        return message
    return message[: match.end()]


def _with_crlf(message: bytes) -> bytes:
    normalised = re.sub(rb"(?<!\r)\n", b"\r\n", message)
    return normalised if normalised.endswith(b"\r\n") else normalised + b"\r\n"


def _original_headers(returned: bytes, ret_full: bool) -> list[str]:
    header_section = _headers_only(returned)
    if ret_full:
        content_type = "message/rfc822" if header_section.isascii() else "message/global"
    else:
        content_type = "text/rfc822-headers" if header_section.isascii() else "message/global-headers"
    # RFC 2046 §5.2.1: message/rfc822 is 7bit, 8bit or binary, never encoded.
    encoding = "7bit" if returned.isascii() else "8bit"
    return [f"Content-Type: {content_type}", f"Content-Transfer-Encoding: {encoding}"]


# --- Shared formatting ---------------------------------------------------------------------------


def _part(boundary: str, headers: list[str], body: bytes) -> bytes:
    head = f"--{boundary}\r\n" + "".join(header + "\r\n" for header in headers) + "\r\n"
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return head.encode("ascii") + body + b"\r\n"


def _boundary(queue_id: str, now: float, bodies: list[bytes]) -> str:
    """A boundary found in no part (RFC 2046 §5.1.1), derived from the queue id."""
    base = f"{_token(queue_id)}/{int(now)}/mailgate-dsn"
    attempt = 0
    while True:
        candidate = f"{base}/{attempt}"[:70]
        marker = f"--{candidate}".encode("ascii")
        if not any(marker in body for body in bodies):
            return candidate
        attempt += 1


def _token(text: str) -> str:
    return _BOUNDARY_UNSAFE.sub("_", text)[:40] or "0"


def _subject(recipients: list[FailedRecipient]) -> str:
    actions = {item.action for item in recipients}
    if "failed" in actions:
        return SUBJECT_FAILED
    if "delayed" in actions:
        return SUBJECT_DELAYED
    return SUBJECT_DELIVERED


def _date(epoch: float) -> str:
    """RFC 5322 §3.3 date-time in UTC, "+0000"."""
    return format_datetime(datetime.fromtimestamp(epoch, timezone.utc))


def _bare(address: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        return address[1:-1]
    return address


def _untyped(mta: str) -> str:
    """"dns; mx.example.com" or "mx.example.com" → "mx.example.com" (RFC 3464 §2.2.2)."""
    _, separator, name = mta.partition(";")
    return name.strip() if separator else mta.strip()


def _clean(text: str) -> str:
    """No control characters in a field: a peer's text must not forge fields or lines."""
    return "".join(char if char.isprintable() else " " for char in text)


def _fold(field: str) -> str:
    """Fold a long field at white space (RFC 5322 §2.2.3); never splits a word."""
    if len(field) <= _FOLD_WIDTH:
        return field
    lines: list[str] = []
    current = ""
    for word in field.split(" "):
        if current and len(current) + 1 + len(word) > _FOLD_WIDTH and current.strip():
            lines.append(current)
            current = " " + word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return "\r\n".join(lines)


def _all_ascii(*texts: str | None) -> bool:
    return all(text is None or text.isascii() for text in texts)


def _recipient_texts(recipients: list[FailedRecipient]) -> list[str | None]:
    texts: list[str | None] = []
    for item in recipients:
        orcpt = _split_orcpt(item.orcpt)[1] if item.orcpt else None
        texts += [item.address, orcpt, item.diagnostic.text if item.diagnostic else None]
    return texts
