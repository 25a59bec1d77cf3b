"""SASL mechanics for SMTP AUTH: PLAIN (RFC 4616) and LOGIN, server steps and client responses.

Owns: decoding the base64 lines of an AUTH exchange (RFC 4954 §4), the PLAIN message
`authzid NUL authcid NUL passwd` (RFC 4616 §2), the de-facto LOGIN exchange ("Username:" then
"Password:" challenges, draft-murchison-sasl-login), and the matching client-side responses.
Must not: check credentials, count failures or know about sessions; the caller does that with
the `Credentials` this returns. Hand-written because both mechanisms are a few lines and the
SASL libraries (e.g. pure-sasl) are client-only or pull in GSSAPI.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from mailgate.core.reply import AUTH_CANCELLED, Reply

# RFC 4954 §4: a response that is not valid base64 is answered 501 5.5.2.
MALFORMED_RESPONSE = Reply(501, "5.5.2", "Cannot decode response")
# RFC 4616 §2: the PLAIN message is authzid NUL authcid NUL passwd, authcid and passwd non-empty.
MALFORMED_PLAIN = Reply(501, "5.5.2", "Malformed PLAIN response")
MECHANISMS = ("PLAIN", "LOGIN")
_USERNAME_CHALLENGE = "Username:"
_PASSWORD_CHALLENGE = "Password:"


class SaslUsageError(Exception):
    """The caller fed an exchange that is already finished, or named an unknown mechanism."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the client claimed. A non-empty `authzid` different from `user` asks to act as
    someone else (RFC 4616 §2); mailgate does not support that, so the caller refuses it."""

    user: str
    password: str
    authzid: str = ""


@dataclass(frozen=True, slots=True)
class Challenge:
    """A 334 challenge to send; `text` is already base64 (RFC 4954 §4)."""

    text: str

    @property
    def reply(self) -> Reply:
        return Reply(334, "", self.text)


@dataclass(frozen=True, slots=True)
class SaslError:
    """The exchange failed; send `reply` and forget the exchange."""

    reply: Reply


Step = Credentials | Challenge | SaslError


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _decode(line: str) -> str | None:
    """Base64 line -> text; "=" is the empty initial response (RFC 4954 §4); None if malformed."""
    if line == "=":
        return ""
    try:
        return base64.b64decode(line.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None


def _plain(message: str) -> Step:
    parts = message.split("\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return SaslError(MALFORMED_PLAIN)
    authzid, user, password = parts
    return Credentials(user=user, password=password, authzid=authzid)


class SaslExchange:
    """One AUTH exchange, server side: `challenge()` first, then `feed()` each client line.

    Each step returns a `Challenge` to send (334), the final `Credentials` to check, or a
    `SaslError`. The "*" cancel line is normally caught by the protocol; here it cancels too.
    """

    def __init__(self, mechanism: str, initial_response: str | None) -> None:
        self.mechanism = mechanism.upper()
        if self.mechanism not in MECHANISMS:
            raise SaslUsageError(f"unsupported mechanism {mechanism!r}")
        self._initial = initial_response
        self._user: str | None = None
        self._finished = False

    def challenge(self) -> Step:
        """The first step: use the initial response if the client sent one, else challenge."""
        if self._initial is not None:
            return self.feed(self._initial)
        if self.mechanism == "PLAIN":
            return Challenge("")  # RFC 4616 §2 / RFC 4954 §4: empty challenge "334 "
        return Challenge(_b64(_USERNAME_CHALLENGE))

    def feed(self, line: str) -> Step:
        if self._finished:
            raise SaslUsageError("the SASL exchange is already finished")
        if line == "*":
            return self._finish(SaslError(AUTH_CANCELLED))
        text = _decode(line)
        if text is None:
            return self._finish(SaslError(MALFORMED_RESPONSE))
        if self.mechanism == "PLAIN":
            return self._finish(_plain(text))
        if self._user is None:
            if not text:
                return self._finish(SaslError(MALFORMED_RESPONSE))
            self._user = text
            return Challenge(_b64(_PASSWORD_CHALLENGE))
        return self._finish(Credentials(user=self._user, password=text))

    def _finish(self, step: Step) -> Step:
        self._finished = True
        return step


# --- client side (used by the outbound client) ---------------------------------------------------


def plain_initial_response(user: str, password: str, authzid: str = "") -> str:
    """The base64 PLAIN message for `AUTH PLAIN <response>` (RFC 4616 §2, RFC 4954 §4)."""
    return _b64(f"{authzid}\0{user}\0{password}")


def login_responses(user: str, password: str) -> tuple[str, str]:
    """The two base64 LOGIN answers, to the username and then the password challenge."""
    return _b64(user), _b64(password)


def login_response(challenge: str, user: str, password: str) -> str:
    """Answer one base64 LOGIN challenge by what it asks for ("Username:" or "Password:")."""
    asked = _decode(challenge)
    if asked is None:
        raise ValueError("LOGIN challenge is not base64")
    if asked.lower().startswith("user"):
        return _b64(user)
    if asked.lower().startswith("pass"):
        return _b64(password)
    raise ValueError(f"unexpected LOGIN challenge {asked!r}")
