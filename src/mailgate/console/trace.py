"""Message trace: find messages in the JSON transaction log and tell each one's whole story.

Owns: matching records by queue id, Message-ID, sender, recipient or client address, then
collecting, per message found, every record about it in time order: the connection it came in
on (opened, refusals, recipient look-ups, closed), its acceptance (relay rule and screening
verdict, TLS), every delivery attempt with next hop and reply, the DSNs it caused and the
administrators' actions on it.
Must not: read files itself beyond jsonlog's readers, or render HTML.

Two passes over the files (the first finds the messages and their sessions, the second collects
their records) keep memory to what is shown, whatever the size of the log. At most MAX_MESSAGES
messages are traced per search; the page says when there were more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailgate.observe import jsonlog

KINDS = ("auto", "queue_id", "message_id", "sender", "recipient", "client")
MAX_MESSAGES = 50


@dataclass
class Story:
    queue_id: str
    accepted: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TraceResult:
    query: str
    kind: str
    stories: list[Story] = field(default_factory=list)
    more: bool = False  # more than MAX_MESSAGES messages matched


def matcher(query: str, kind: str) -> Callable[[dict[str, Any]], bool]:
    """A test of one record; `auto` tries every kind (a queue id, a Message-ID, an address...)."""
    needle = query.strip().strip("<>").lower()

    def queue_id(record: dict[str, Any]) -> bool:
        return needle in (str(record.get("queue_id", "")).lower(), str(record.get("dsn_queue_id", "")).lower())

    def message_id(record: dict[str, Any]) -> bool:
        return str(record.get("message_id", "")).strip().strip("<>").lower() == needle

    def sender(record: dict[str, Any]) -> bool:
        return needle in str(record.get("sender", "")).lower()

    def recipient(record: dict[str, Any]) -> bool:
        listed = record.get("recipients") or [record.get("recipient", "")]
        return any(needle in str(address).lower() for address in listed)

    def client(record: dict[str, Any]) -> bool:
        return str(record.get("client_ip", "")).lower().removeprefix("::ffff:") == needle.removeprefix("::ffff:")

    tests = {"queue_id": queue_id, "message_id": message_id, "sender": sender, "recipient": recipient,
             "client": client}
    if kind == "auto":
        return lambda record: any(test(record) for test in tests.values())
    return tests[kind]


def trace(paths: Iterable[Path], query: str, kind: str = "auto", since: float | None = None) -> TraceResult:
    """Blocking file reads: call it in a thread."""
    if kind not in KINDS:
        raise ValueError(f"unknown search kind {kind!r}")
    result = TraceResult(query, kind)
    paths = list(paths)
    if not query.strip():
        return result
    test = matcher(query, kind)
    stories: dict[str, Story] = {}
    sessions: dict[str, list[Story]] = {}
    for record in jsonlog.read_records(paths, since):
        if record.get("event") != jsonlog.TRANSACTION_ACCEPTED or not test(record):
            continue
        queue_id = str(record.get("queue_id"))
        if queue_id not in stories and len(stories) >= MAX_MESSAGES:
            result.more = True
            continue
        story = stories.setdefault(queue_id, Story(queue_id))
        story.accepted = record
        sessions.setdefault(str(record.get("session_id")), []).append(story)
    if kind in ("auto", "queue_id", "recipient"):
        _add_delivered_only(paths, since, test, stories, result)
    for record in jsonlog.read_records(paths, since):
        for story in _stories_of(record, stories, sessions):
            story.records.append(record)
    result.stories = sorted(stories.values(), key=lambda s: s.records[0]["_when"] if s.records else 0)
    return result


def _add_delivered_only(paths: list[Path], since: float | None, test, stories: dict[str, Story],
                        result: TraceResult) -> None:
    """Messages whose acceptance is older than the log kept (or that mailgate made, DSNs) are
    still found by their delivery records."""
    for record in jsonlog.read_records(paths, since):
        if record.get("event") not in (jsonlog.DELIVERY_ATTEMPT, jsonlog.BOUNCE) or not test(record):
            continue
        queue_id = str(record.get("queue_id"))
        if queue_id in stories:
            continue
        if len(stories) >= MAX_MESSAGES:
            result.more = True
            return
        stories[queue_id] = Story(queue_id)


def _stories_of(record: dict[str, Any], stories: dict[str, Story], sessions: dict[str, list[Story]]) -> list[Story]:
    found = []
    session = record.get("session_id")
    if session is not None and str(session) in sessions and record.get("event") != jsonlog.TRANSACTION_ACCEPTED:
        found += sessions[str(session)]  # the connection around the message: one record for each of its messages
    ids = {str(record.get("queue_id", "")), str(record.get("dsn_queue_id", ""))} | set(map(str, record.get("queue_ids", [])))
    found += [stories[queue_id] for queue_id in ids if queue_id in stories and stories[queue_id] not in found]
    return found
