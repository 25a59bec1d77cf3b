"""The dispatch tables cover every event type and every state (issue 19 item 4).

Each consumer of the protocol's events dispatches on the event's type from one table: the
protocol's EFFECTS (what a reply does), the session's ANSWERS (the reply) and the command log's
DESCRIPTIONS. A new event type, or a new stage of the command order, must be given a row in
each, or these tests fail; a table row for a type that is no event fails too."""

from __future__ import annotations

import pytest

from mailgate.core.reply import Reply
from mailgate.server import command_log
from mailgate.server.session import ANSWERS
from mailgate.smtp import events as ev
from mailgate.smtp.server import EFFECTS, NO_EFFECT, SEQUENCE, Mode, ServerProtocol, Stage, _READERS
from tests.support.smtp_driver import Driver, make_settings

REPLIED = frozenset(kind for kind in ev.EVENT_TYPES if kind not in (ev.BodyChunk, ev.Closed))
COMMAND_VERBS = {"EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "HELP", "STARTTLS", "AUTH"}


def test_every_event_type_has_a_verb() -> None:
    for kind in ev.EVENT_TYPES:
        verb = kind.verb if kind is not ev.Hello else ev.Hello("client.test", extended=True).verb
        assert isinstance(verb, str), kind
        assert verb in COMMAND_VERBS | {"ERROR", ""}, (kind, verb)
    assert ev.Hello("c", extended=False).verb == "HELO"


def test_reply_effects_cover_every_event_that_needs_a_reply() -> None:
    assert set(EFFECTS) | NO_EFFECT == REPLIED
    assert not set(EFFECTS) & NO_EFFECT


def test_session_answers_every_event_that_needs_a_reply() -> None:
    assert set(ANSWERS) == REPLIED
    for kind, answer in ANSWERS.items():
        assert isinstance(answer, Reply) or callable(answer), kind


def test_command_log_has_a_row_for_every_event() -> None:
    assert set(command_log.DESCRIPTIONS) == set(ev.EVENT_TYPES)


def test_needs_reply_agrees_with_the_tables() -> None:
    assert {kind for kind in ev.EVENT_TYPES if kind not in (ev.BodyChunk, ev.Closed)} == REPLIED
    assert not ev.needs_reply(ev.BodyChunk(b"x")) and not ev.needs_reply(ev.Closed())


def test_sequence_table_covers_every_stage_with_known_commands() -> None:
    assert set(SEQUENCE) == set(Stage)
    for stage, refused in SEQUENCE.items():
        assert set(refused) <= COMMAND_VERBS, stage
        assert all(reply.code == 503 for reply in refused.values()), stage  # RFC 5321 §4.1.4
        # EHLO, HELO, RSET, NOOP and QUIT are allowed in every stage (RFC 5321 §4.1.4).
        assert not {"EHLO", "HELO", "RSET", "NOOP", "QUIT"} & set(refused), stage


def test_every_mode_but_closed_has_a_reader() -> None:
    assert set(_READERS) == set(Mode) - {Mode.CLOSED}


# The stage the protocol reports is the one the table is read in: each stage, reached by real
# commands, refuses exactly what its row says and lets the rest through.
_REACH = {
    Stage.NEED_HELLO: b"",
    Stage.READY: b"EHLO c.test\r\n",
    Stage.IN_MAIL: b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n",
    Stage.IN_RCPT: b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n",
    Stage.IN_BDAT: b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nBDAT 1\r\nx",
}
_PROBES = {
    "MAIL": b"MAIL FROM:<p@b.test>\r\n", "RCPT": b"RCPT TO:<q@y.test>\r\n", "DATA": b"DATA\r\n",
    "BDAT": b"BDAT 1\r\ny", "AUTH": b"AUTH PLAIN\r\n",
}


@pytest.mark.parametrize("stage", list(Stage))
def test_each_stage_refuses_what_its_row_says(stage: Stage) -> None:
    assert set(_REACH) == set(Stage)
    for verb, line in _PROBES.items():
        driver = Driver(make_settings(tls_active=True, starttls_offered=False))  # AUTH needs TLS
        driver.feed(_REACH[stage])
        protocol: ServerProtocol = driver.protocol
        assert protocol.stage is stage
        out = driver.feed(line)
        refusal = SEQUENCE[stage].get(verb)
        if refusal is not None:
            assert out == refusal.encode(), (stage, verb)
        else:
            assert not out.startswith(b"503"), (stage, verb, out)
