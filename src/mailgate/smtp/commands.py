"""Parsing of SMTP command arguments: ESMTP parameters of MAIL and RCPT, xtext.

Owns: the esmtp-param grammar of RFC 5321 §4.1.2, the MAIL parameters SIZE (RFC 1870),
BODY (RFC 6152), SMTPUTF8 (RFC 6531), RET and ENVID (RFC 3461), AUTH= (RFC 4954 §5), the RCPT
parameters NOTIFY and ORCPT (RFC 3461), and xtext (RFC 3461 §4). Failures raise
`CommandError` carrying the exact reply.
Must not: track session state or decide policy; which extensions are on is passed in.
"""

from __future__ import annotations

import re
from dataclasses import replace

from mailgate.core.address import Address, AddressError, normalise_domain, parse_path
from mailgate.core.envelope import BodyType, Notify, Recipient, Ret
from mailgate.core.reply import (
    BAD_ADDRESS_SYNTAX,
    BAD_SENDER_SYNTAX,
    MESSAGE_TOO_BIG,
    PARAM_NOT_RECOGNIZED,
    PARAM_SYNTAX,
    UTF8_NOT_ANNOUNCED,
    Reply,
)
from mailgate.smtp.events import MailFrom

# RFC 5321 §4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-");
# esmtp-value = 1*(%d33-60 / %d62-126), widened to UTF-8 by RFC 6531 §3.3.
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE = re.compile(r"[!-<>-~\u0080-\U0010ffff]+")
# RFC 3461 §4: xtext = *( xchar / hexchar ); xchar is "!".."~" except "+" and "=".
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*")
_HEXCHAR = re.compile(r"\+([0-9A-Fa-f]{2})")
# RFC 3461 §4.2: addr-type is an atom.
_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
MAX_ENVID = 100  # RFC 3461 §4.4
MAX_ORCPT = 500  # RFC 3461 §4.2
MAX_SIZE_DIGITS = 20  # RFC 1870 §3: size-value = 1*20DIGIT

INVALID_XTEXT = Reply(501, "5.5.4", "Invalid xtext in parameter value")
DUPLICATE_PARAM = Reply(501, "5.5.4", "Duplicate parameter")
BAD_NOTIFY = Reply(501, "5.5.4", "NOTIFY is NEVER or a list of SUCCESS, FAILURE, DELAY")


class CommandError(Exception):
    """The command cannot be accepted; `reply` says why."""

    def __init__(self, reply: Reply, *, counts_as_error: bool = True) -> None:
        super().__init__(str(reply))
        self.reply = reply
        # A SIZE over the limit is a refusal, not a client mistake: it does not use the budget.
        self.counts_as_error = counts_as_error


def decode_xtext(text: str) -> str:
    """RFC 3461 §4 xtext -> text ("+2B" -> "+"); CommandError when malformed."""
    if not _XTEXT.fullmatch(text):
        raise CommandError(INVALID_XTEXT)
    raw = _HEXCHAR.sub(lambda match: chr(int(match[1], 16)), text)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise CommandError(INVALID_XTEXT) from None


def parse_parameters(text: str) -> dict[str, str | None]:
    """`KEY=value KEY2` -> {"KEY": "value", "KEY2": None}; keywords upper-cased."""
    params: dict[str, str | None] = {}
    for item in text.split():
        keyword, equals, value = item.partition("=")
        if not _KEYWORD.fullmatch(keyword) or (equals and not _VALUE.fullmatch(value)):
            raise CommandError(PARAM_SYNTAX)
        keyword = keyword.upper()
        if keyword in params:
            raise CommandError(DUPLICATE_PARAM)
        params[keyword] = value if equals else None
    return params


def _require_value(value: str | None) -> str:
    if value is None:
        raise CommandError(PARAM_SYNTAX)
    return value


def _parse_size(value: str | None, max_message_size: int) -> int:
    text = _require_value(value)
    if not text.isdigit() or not text.isascii() or len(text) > MAX_SIZE_DIGITS:
        raise CommandError(PARAM_SYNTAX)
    size = int(text)
    # RFC 1870 §6.1: a declared size over the fixed maximum is refused at MAIL with 552.
    if max_message_size and size > max_message_size:
        raise CommandError(MESSAGE_TOO_BIG, counts_as_error=False)
    return size


def _parse_body(value: str | None) -> BodyType:
    text = _require_value(value).upper()
    if text == BodyType.SEVEN_BIT.value:
        return BodyType.SEVEN_BIT
    if text == BodyType.EIGHT_BIT_MIME.value:
        return BodyType.EIGHT_BIT_MIME
    if text == BodyType.BINARYMIME.value:
        # RFC 3030 §3: BINARYMIME is not advertised here, so it is an unknown parameter value.
        raise CommandError(PARAM_NOT_RECOGNIZED)
    raise CommandError(PARAM_SYNTAX)


def _parse_ret(value: str | None) -> Ret:
    try:
        return Ret(_require_value(value).upper())
    except ValueError:
        raise CommandError(PARAM_SYNTAX) from None


def _parse_envid(value: str | None) -> str:
    text = _require_value(value)
    if len(text) > MAX_ENVID:
        raise CommandError(PARAM_SYNTAX)
    return decode_xtext(text)


def parse_mail(
    argument: str,
    *,
    esmtp: bool,
    max_message_size: int,
    eight_bit_mime: bool,
    smtputf8: bool,
    dsn: bool,
    auth: bool,
) -> MailFrom:
    """The text after `MAIL FROM:`; the flags say which extensions this session offered."""
    try:
        # Parsed leniently for UTF-8 first; the RFC 6531 §3.4 check follows once SMTPUTF8 is known.
        sender, rest = parse_path(argument, allow_null=True, smtputf8=True)
    except AddressError:
        raise CommandError(BAD_SENDER_SYNTAX) from None
    params = parse_parameters(rest)
    if params and not esmtp:
        raise CommandError(PARAM_NOT_RECOGNIZED)  # RFC 5321 §4.1.1.11: no extensions after HELO
    mail = MailFrom(sender)
    for keyword, value in params.items():
        if keyword == "SIZE":
            mail = replace(mail, size=_parse_size(value, max_message_size))
        elif keyword == "BODY" and eight_bit_mime:
            mail = replace(mail, body=_parse_body(value))
        elif keyword == "SMTPUTF8" and smtputf8 and value is None:
            mail = replace(mail, smtputf8=True)
        elif keyword == "RET" and dsn:
            mail = replace(mail, ret=_parse_ret(value))
        elif keyword == "ENVID" and dsn:
            mail = replace(mail, envid=_parse_envid(value))
        elif keyword == "AUTH" and auth:
            text = _require_value(value)
            mail = replace(mail, auth_param="<>" if text == "<>" else decode_xtext(text))
        else:
            raise CommandError(PARAM_NOT_RECOGNIZED)  # RFC 5321 §4.1.1.11: 555
    if not argument.isascii() and not mail.smtputf8:
        raise CommandError(UTF8_NOT_ANNOUNCED)  # RFC 6531 §3.4: 553 5.6.7
    return mail


def _parse_notify(value: str | None) -> tuple[Notify, ...]:
    items = _require_value(value).upper().split(",")
    try:
        kinds = tuple(dict.fromkeys(Notify(item) for item in items))
    except ValueError:
        raise CommandError(BAD_NOTIFY) from None
    # RFC 3461 §4.1: NEVER stands alone.
    if Notify.NEVER in kinds and len(kinds) > 1:
        raise CommandError(BAD_NOTIFY)
    return kinds


def _parse_orcpt(value: str | None) -> str:
    text = _require_value(value)
    addr_type, semicolon, address = text.partition(";")
    if len(text) > MAX_ORCPT or not semicolon or not _ADDR_TYPE.fullmatch(addr_type) or not address:
        raise CommandError(PARAM_SYNTAX)
    decode_xtext(address)  # validated here; stored as given for the next hop and the DSN
    return text


def _postmaster(argument: str, postmaster_domain: str) -> Address | None:
    """RFC 5321 §4.1.1.3: `RCPT TO:<Postmaster>` without a domain must be accepted."""
    if argument.strip(" ").partition(" ")[0].lower() != "<postmaster>":
        return None
    try:
        return Address("postmaster", normalise_domain(postmaster_domain))
    except AddressError:
        raise CommandError(BAD_ADDRESS_SYNTAX) from None


def parse_rcpt(
    argument: str, *, esmtp: bool, smtputf8: bool, dsn: bool, postmaster_domain: str
) -> Recipient:
    """The text after `RCPT TO:`; `smtputf8` is what the transaction's MAIL declared."""
    if not argument.isascii() and not smtputf8:
        raise CommandError(UTF8_NOT_ANNOUNCED)  # RFC 6531 §3.4: 553 5.6.7
    address = _postmaster(argument, postmaster_domain)
    try:
        if address is None:
            address, rest = parse_path(argument, allow_null=False, smtputf8=smtputf8)
        else:
            rest = argument.strip(" ").partition(" ")[2]
    except AddressError:
        raise CommandError(BAD_ADDRESS_SYNTAX) from None
    assert address is not None  # allow_null=False
    recipient = Recipient(address)
    params = parse_parameters(rest)
    if params and not esmtp:
        raise CommandError(PARAM_NOT_RECOGNIZED)  # RFC 5321 §4.1.1.11: no extensions after HELO
    for keyword, value in params.items():
        if keyword == "NOTIFY" and dsn:
            recipient.notify = _parse_notify(value)
        elif keyword == "ORCPT" and dsn:
            recipient.orcpt = _parse_orcpt(value)
        else:
            raise CommandError(PARAM_NOT_RECOGNIZED)  # RFC 5321 §4.1.1.11: 555
    return recipient
