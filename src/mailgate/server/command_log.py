"""How one answered protocol event appears in the W3C command log (IIS style).

Owns: the table from each event type to its log line (verb, argument, bytes in). The verb is the
event's own (`smtp/events.py`). AUTH keeps only the mechanism; SASL continuation lines and
message bodies are never logged (DATA and BDAT are logged once, at their final reply, with the
queue id). Must not: write logs (observe/translog.py) or decide anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailgate.smtp import events as ev

Description = tuple[str, str, int]


def _command(argument_of: Callable[[Any], str]) -> Callable[[Any, str], Description]:
    """A command logged as it was received: verb, a space and the argument if any, CRLF."""

    def description(event: Any, queue_id: str) -> Description:
        argument = argument_of(event)
        return event.verb, argument, len(event.verb) + (len(argument) + 1 if argument else 0) + 2

    return description


def _no_argument(event: Any) -> str:
    return ""


def _message(event: Any, queue_id: str) -> Description:
    return event.verb, queue_id, event.size  # the body's size, not a command line


def _error(event: Any, queue_id: str) -> Description:
    return event.verb, "", 0


def _not_logged(event: Any, queue_id: str) -> None:
    return None


# Every event type, and how it is logged (None: not on its own line).
DESCRIPTIONS: dict[type, Callable[[Any, str], Description | None]] = {
    ev.Hello: _command(lambda event: event.name),
    ev.MailFrom: _command(lambda event: f"FROM:<{'' if event.sender is None else event.sender}>"),
    ev.RcptTo: _command(lambda event: f"TO:<{event.recipient.address}>"),
    ev.AuthStart: _command(lambda event: event.mechanism),
    ev.Verify: _command(lambda event: event.argument),
    ev.Help: _command(_no_argument),  # HELP's argument is not logged
    ev.Reset: _command(_no_argument),
    ev.Noop: _command(_no_argument),
    ev.Quit: _command(_no_argument),
    ev.StartTls: _command(_no_argument),
    ev.MessageEnd: _message,
    ev.ProtocolError: _error,
    ev.TooManyErrors: _error,
    ev.FramingLost: _error,
    ev.DataStart: _not_logged,  # logged once, at MessageEnd
    ev.BdatChunkEnd: _not_logged,
    ev.AuthLine: _not_logged,  # SASL lines carry credentials
    ev.BodyChunk: _not_logged,
    ev.Closed: _not_logged,
}


def describe(event: ev.Event, queue_id: str = "") -> Description | None:
    """(verb, argument, bytes in) for a logged event, None for events not logged on their own."""
    return DESCRIPTIONS[type(event)](event, queue_id)
