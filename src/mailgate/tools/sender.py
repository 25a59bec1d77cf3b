"""`mailgate send`: one test message to a server, like swaks, with the transcript.

Owns: building the test message (RFC 5322 headers, a text body, attachments as MIME parts, with
the stdlib `email` package), the session (greeting, EHLO with HELO fallback, STARTTLS or implicit
TLS or none, AUTH PLAIN or LOGIN only inside TLS (SPEC R4, RFC 4954 §4), MAIL, one RCPT per
recipient, DATA with dot-stuffing by `smtp.client.BodyEncoder`) and the per-recipient result.
Must not: queue or retry (it is a one-shot test), print (the CLI does), or send AUTH in clear.

TLS modes: "starttls" requires STARTTLS; "implicit" is TLS from the first byte (RFC 8314 §3);
"none" never starts TLS; None (the default) starts TLS when the server offers STARTTLS.
Certificates are not verified unless a CA file is given (`ca_file`): a test tool must reach
servers with lab certificates; the transcript shows the TLS version either way.
"""

from __future__ import annotations

import base64
import mimetypes
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from mailgate.core.reply import Reply
from mailgate.smtp.client import BodyEncoder, parse_ehlo
from mailgate.tools.conversation import (
    DEFAULT_TIMEOUT, Conversation, ConversationError, insecure_client_context,
)
from mailgate.tools.options import SEND_SUBJECT


@dataclass(frozen=True)
class SendSettings:
    host: str
    port: int
    mail_from: str
    recipients: tuple[str, ...]
    subject: str = SEND_SUBJECT
    body: str = "This is a test message sent by `mailgate send`.\n"
    attachments: tuple[Path, ...] = ()
    user: str | None = None
    password: str | None = None
    tls: str | None = None  # see the module docstring
    helo: str = "localhost"
    timeout: float = DEFAULT_TIMEOUT
    ca_file: str | None = None
    source_address: str | None = None


class SendError(Exception):
    """The message could not be sent; `stage` says where, the transcript says the rest."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


@dataclass
class SendResult:
    accepted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> reply
    final_reply: str = ""  # the reply to the end of DATA
    delivered: bool = False  # the server took the message for every accepted recipient
    tls: str = ""
    transcript: list[str] = field(default_factory=list)
    error: str = ""
    failed_stage: str = ""  # "connection" (network, TLS, time-out) or the SMTP stage that refused


def build_message(settings: SendSettings) -> bytes:
    message = EmailMessage()
    message["From"] = settings.mail_from or "<>"
    message["To"] = ", ".join(settings.recipients)
    message["Subject"] = settings.subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=_domain_of(settings.mail_from) or settings.helo)
    message["X-Mailer"] = "mailgate send"
    message.set_content(settings.body)
    for path in settings.attachments:
        kind, _ = mimetypes.guess_type(path.name)
        maintype, subtype = (kind or "application/octet-stream").split("/", 1)
        message.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name)
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def _domain_of(address: str) -> str:
    return address.rsplit("@", 1)[1] if "@" in address else ""


def _context(settings: SendSettings) -> ssl.SSLContext:
    if settings.ca_file:
        return ssl.create_default_context(cafile=settings.ca_file)
    return insecure_client_context()


async def send_message(settings: SendSettings) -> SendResult:
    """Send the test message. Never raises for a server or network problem: the outcome, with
    `error` and the transcript, is in the returned SendResult."""
    result = SendResult()
    message = build_message(settings)
    implicit = _context(settings) if settings.tls == "implicit" else None
    try:
        conversation = await Conversation.open(
            settings.host, settings.port, timeout=settings.timeout,
            source_address=settings.source_address, implicit_tls=implicit,
        )
    except ConversationError as exc:
        result.error, result.failed_stage = f"connect: {exc}", "connection"
        return result
    try:
        await _session(conversation, settings, message, result)
    except ConversationError as exc:
        result.error, result.failed_stage = str(exc), "connection"
    except SendError as exc:
        result.error, result.failed_stage = str(exc), exc.stage
    finally:
        await conversation.quit()
        result.transcript = conversation.transcript
    return result


async def _hello(conversation: Conversation, helo: str) -> tuple[Reply, bool]:
    reply = await conversation.command(f"EHLO {helo}")
    if reply.is_positive:
        return reply, True
    reply = await conversation.command(f"HELO {helo}")  # RFC 5321 §3.2 fallback
    if not reply.is_positive:
        raise SendError("hello", str(reply))
    return reply, False


async def _session(conversation: Conversation, settings: SendSettings, message: bytes, result: SendResult) -> None:
    greeting = await conversation.reply()
    if greeting.code != 220:
        raise SendError("greeting", str(greeting))
    hello, extended = await _hello(conversation, settings.helo)
    extensions = parse_ehlo(hello) if extended else parse_ehlo(Reply(250, "", ""))
    wants_tls = settings.tls in (None, "starttls")
    if wants_tls and conversation.ssl_object is None and extensions.has("STARTTLS"):
        ready = await conversation.command("STARTTLS")
        if ready.code != 220:
            raise SendError("starttls", str(ready))
        server_name = settings.host if settings.ca_file else None
        await conversation.start_tls(_context(settings), server_hostname=server_name)
        hello, extended = await _hello(conversation, settings.helo)  # RFC 3207 §4.2
        extensions = parse_ehlo(hello)
    elif settings.tls == "starttls" and conversation.ssl_object is None:
        raise SendError("starttls", "the server does not offer STARTTLS (use --tls none to send in clear)")
    ssl_object = conversation.ssl_object
    if ssl_object is not None:
        result.tls = str(ssl_object.version())
    if settings.user:
        await _authenticate(conversation, settings, extensions.auth_mechanisms)
    await _transaction(conversation, settings, message, extensions.has("SMTPUTF8"), result)


async def _authenticate(conversation: Conversation, settings: SendSettings, mechanisms: frozenset[str]) -> None:
    if conversation.ssl_object is None:
        raise SendError("auth", "refusing to send a password without TLS (SPEC R4); use --tls starttls or implicit")
    user, password = settings.user or "", settings.password or ""
    if "PLAIN" in mechanisms or not mechanisms:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()  # RFC 4616 §2
        reply = await conversation.command(f"AUTH PLAIN {token}", shown="AUTH PLAIN <credentials hidden>")
    elif "LOGIN" in mechanisms:
        reply = await conversation.command("AUTH LOGIN")
        for secret, label in ((user, "<user>"), (password, "<password hidden>")):
            if reply.code != 334:
                break
            reply = await conversation.command(base64.b64encode(secret.encode()).decode(), shown=label)
    else:
        raise SendError("auth", f"no mechanism in common (server offers {' '.join(sorted(mechanisms))})")
    if reply.code != 235:  # RFC 4954 §6
        raise SendError("auth", str(reply))


async def _transaction(
    conversation: Conversation, settings: SendSettings, message: bytes, server_utf8: bool, result: SendResult
) -> None:
    paths = settings.mail_from + "".join(settings.recipients)
    utf8 = " SMTPUTF8" if not paths.isascii() and server_utf8 else ""  # RFC 6531 §3.4
    mail = await conversation.command(f"MAIL FROM:<{settings.mail_from}>{utf8}")
    if not mail.is_positive:
        raise SendError("mail", str(mail))
    for recipient in settings.recipients:
        reply = await conversation.command(f"RCPT TO:<{recipient}>")
        if reply.is_positive:
            result.accepted.append(recipient)
        else:
            result.refused[recipient] = str(reply)
    if not result.accepted:
        await conversation.command("RSET")
        raise SendError("rcpt", "every recipient was refused")
    data = await conversation.command("DATA")
    if data.code != 354:  # RFC 5321 §4.1.1.4
        raise SendError("data", str(data))
    encoder = BodyEncoder()
    wire = encoder.encode(message) + encoder.finish()
    await conversation.send_raw(wire, f"<message, {len(message)} octets> .")
    final = await conversation.reply()
    result.final_reply = str(final)
    if not final.is_positive:
        raise SendError("end of data", str(final))
    result.delivered = True
