"""How one answered protocol event appears in the W3C command log (IIS style).

Owns: the mapping from an event to its verb and argument, and the byte counts the log records.
AUTH keeps only the mechanism; SASL continuation lines and message bodies are never logged
(DATA and BDAT are logged once, at their final reply, with the queue id). Must not: write logs
(observe/translog.py) or decide anything.
"""

from __future__ import annotations

from mailgate.smtp import events as ev


def describe(event: ev.Event, queue_id: str = "") -> tuple[str, str, int] | None:
    """(verb, argument, bytes in) for a logged event, None for events not logged on their own."""
    if isinstance(event, ev.Hello):
        verb = "EHLO" if event.extended else "HELO"
        return verb, event.name, len(verb) + len(event.name) + 3
    if isinstance(event, ev.MailFrom):
        argument = f"FROM:<{'' if event.sender is None else event.sender}>"
        return "MAIL", argument, len(argument) + 7
    if isinstance(event, ev.RcptTo):
        argument = f"TO:<{event.recipient.address}>"
        return "RCPT", argument, len(argument) + 7
    if isinstance(event, ev.MessageEnd):
        return "DATA", queue_id, event.size
    if isinstance(event, ev.AuthStart):
        return "AUTH", event.mechanism, len(event.mechanism) + 7
    if isinstance(event, ev.Verify):
        return "VRFY", event.argument, len(event.argument) + 7
    if isinstance(event, (ev.ProtocolError, ev.TooManyErrors, ev.FramingLost)):
        return "ERROR", "", 0
    simple = {ev.Reset: "RSET", ev.Noop: "NOOP", ev.Quit: "QUIT", ev.Help: "HELP", ev.StartTls: "STARTTLS"}
    verb = simple.get(type(event))
    return (verb, "", len(verb) + 2) if verb else None
