"""What one SMTP listener offers, and the EHLO keyword list that follows from it.

Owns: `ServerSettings` (per listener, per TLS state) and `ehlo_keywords` (RFC 5321 §4.1.1.1),
including the rule that AUTH is offered only inside TLS (RFC 4954 §4, SPEC R4).
Must not: parse commands or hold connection state; `smtp/server.py` does that.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSettings:
    hostname: str
    max_message_size: int  # RFC 1870 SIZE; 0 = unlimited
    starttls_offered: bool  # the listener can do STARTTLS and TLS is not active yet
    tls_active: bool  # implicit TLS, or after STARTTLS
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")  # offered only with TLS (SPEC R4)
    chunking: bool = True  # RFC 3030
    dsn: bool = True  # RFC 3461
    smtputf8: bool = True  # RFC 6531
    eight_bit_mime: bool = True  # RFC 6152
    pipelining: bool = True  # RFC 2920
    max_command_line: int = 512  # RFC 5321 §4.5.3.1.4, including CRLF
    max_text_line: int = 1000  # RFC 5321 §4.5.3.1.6, including CRLF
    # A bare CR or LF in message data (RFC 5321 §2.3.8): "normalize" passes it on as CRLF,
    # "reject" and "no" pass it on as it came (MessageEnd flags it). Never an end of data.
    bare_line_endings: str = "reject"
    error_budget: int = 10  # protocol errors before 421 4.7.0
    # RFC 5321 §4.5.1: `RCPT TO:<Postmaster>` must be accepted; it names postmaster@this domain
    # ("" = hostname; the server sets a hosted domain when its hostname is not one).
    postmaster_domain: str = ""

    @property
    def auth_offered(self) -> bool:
        """RFC 4954 §4 and SPEC R4: no AUTH in clear text."""
        return self.tls_active and bool(self.auth_mechanisms)


def ehlo_keywords(settings: ServerSettings) -> list[str]:
    """The EHLO extension lines for these settings, in a stable order."""
    offered = [
        ("PIPELINING", settings.pipelining),  # RFC 2920
        (f"SIZE {settings.max_message_size}", True),  # RFC 1870 §4 (0: no fixed limit)
        ("8BITMIME", settings.eight_bit_mime),  # RFC 6152
        ("SMTPUTF8", settings.smtputf8),  # RFC 6531
        ("ENHANCEDSTATUSCODES", True),  # RFC 2034
        ("STARTTLS", settings.starttls_offered and not settings.tls_active),  # RFC 3207
        (f"AUTH {' '.join(settings.auth_mechanisms)}", settings.auth_offered),  # RFC 4954
        ("CHUNKING", settings.chunking),  # RFC 3030
        ("DSN", settings.dsn),  # RFC 3461
    ]
    return [keyword for keyword, on in offered if on]
