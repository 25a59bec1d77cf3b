"""A tiny driver for `mailgate.smtp.server.ServerProtocol` in tests: feeds bytes, answers every
event the way a permissive session would, and records the events, the replies and the messages.

Owns: only test convenience. Must not: hold protocol logic of its own beyond the answers below.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.core.reply import (
    AUTH_FAILED, AUTH_OK, CANNOT_VRFY, CLOSING, HELP, NOOP_OK, READY_TLS, RECIPIENT_OK, RESET_OK,
    SENDER_OK, START_DATA, Reply, bdat_chunk_ok, queued,
)
from mailgate.smtp import events as ev
from mailgate.smtp.sasl import Challenge, Credentials, SaslExchange
from mailgate.smtp.server import ServerProtocol, ServerSettings

USERS = {"alice": "secret"}


def make_settings(**overrides: object) -> ServerSettings:
    values: dict[str, object] = {
        "hostname": "mx.test",
        "max_message_size": 10000,
        "starttls_offered": True,
        "tls_active": False,
    }
    values.update(overrides)
    return ServerSettings(**values)  # type: ignore[arg-type]


@dataclass
class Driver:
    settings: ServerSettings = field(default_factory=make_settings)
    # Per event type, a reply that replaces the default answer (e.g. refuse RCPT).
    overrides: dict[type, Reply] = field(default_factory=dict)
    events: list[object] = field(default_factory=list)
    messages: list[tuple[bytes, ev.MessageEnd]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.protocol = ServerProtocol(self.settings)
        self._body = bytearray()
        self._sasl: SaslExchange | None = None

    def feed(self, data: bytes) -> bytes:
        """Feed `data`, answer every event until NeedData or Closed, return the bytes sent."""
        self.protocol.receive_data(data)
        out = bytearray()
        for _ in range(100_000):  # bounded: each event consumes input or changes state
            event = self.protocol.next_event()
            if isinstance(event, (ev.NeedData, ev.Closed)):
                if isinstance(event, ev.Closed) and not self.closed:
                    self.events.append(event)
                return bytes(out)
            self.events.append(event)
            if isinstance(event, ev.BodyChunk):
                self._body += event.data
                continue
            out += self.protocol.send(self.answer(event))
        raise AssertionError("protocol did not settle")

    def answer(self, event: object) -> Reply:
        if type(event) in self.overrides:
            return self.overrides[type(event)]
        if isinstance(event, (ev.ProtocolError, ev.TooManyErrors, ev.FramingLost)):
            return event.reply
        if isinstance(event, ev.MessageEnd):
            self.messages.append((bytes(self._body), event))
            self._body.clear()
            return queued(f"Q{len(self.messages)}")
        if isinstance(event, ev.BdatChunkEnd):
            return bdat_chunk_ok(event.size)
        if isinstance(event, ev.AuthStart):
            self._sasl = SaslExchange(event.mechanism, event.initial_response)
            return self._sasl_reply(self._sasl.challenge())
        if isinstance(event, ev.AuthLine):
            assert self._sasl is not None
            return self._sasl_reply(self._sasl.feed(event.text))
        return {
            ev.Hello: Reply(250, "", "Hello"),
            ev.MailFrom: SENDER_OK,
            ev.RcptTo: RECIPIENT_OK,
            ev.DataStart: START_DATA,
            ev.Reset: RESET_OK,
            ev.Noop: NOOP_OK,
            ev.Quit: CLOSING,
            ev.Verify: CANNOT_VRFY,
            ev.Help: HELP,
            ev.StartTls: READY_TLS,
        }[type(event)]

    def _sasl_reply(self, step: object) -> Reply:
        if isinstance(step, Challenge):
            return step.reply
        if isinstance(step, Credentials):
            ok = USERS.get(step.user) == step.password and step.authzid in ("", step.user)
            return AUTH_OK if ok else AUTH_FAILED
        return step.reply  # type: ignore[attr-defined]

    @property
    def closed(self) -> bool:
        return bool(self.events) and isinstance(self.events[-1], ev.Closed)

    def of_type(self, kind: type) -> list[object]:
        return [event for event in self.events if isinstance(event, kind)]
