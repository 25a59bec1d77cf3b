"""The JSON-lines transaction log: one JSON object per line, one line per event.

Owns: the record shape, its rendering, the event names, the daily file names derived from the
configured `log.json_file` (`/var/log/mailgate/transactions.jsonl` is written as
`transactions-YYYYMMDD.jsonl` beside it; point a log shipper at `transactions-*.jsonl`), and
reading the files back for `mailgate stats` and the web console (whole, or what was appended).
Must not: write files or rotate (writer.py) or decide what is logged (translog.py).

Shape (what Filebeat, Vector, Fluent Bit, Promtail and Logstash take without a parser rule):
a flat object per line, UTF-8, with `@timestamp` (RFC 3339, UTC, milliseconds, `Z`), `event`
(one of EVENTS) and the event's fields in snake_case. Lists stay lists (recipients). A reply is
three fields: `reply_code`, `reply_enhanced`, `reply_text`. JSON escapes every control
character, so a hostile address cannot forge a line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mailgate.core.reply import Reply
from mailgate.observe import stamps
from mailgate.observe.writer import DatedNaming, utc_day

log = logging.getLogger("mailgate.observe")

CONNECTION_OPENED = "connection.opened"
CONNECTION_CLOSED = "connection.closed"
CONNECTION_REFUSED = "connection.refused"
TRANSACTION_ACCEPTED = "transaction.accepted"
TRANSACTION_REFUSED = "transaction.refused"
DELIVERY_ATTEMPT = "delivery.attempt"
BOUNCE = "bounce"
SELF_AUDIT = "self_audit"  # one per listener at start-up; its own connections are not logged
RECIPIENT_LOOKUP = "recipient.lookup"
ADMIN_ACTION = "admin.action"  # the web console changed the queue (console/)
EVENTS = (
    CONNECTION_OPENED, CONNECTION_CLOSED, CONNECTION_REFUSED, TRANSACTION_ACCEPTED,
    TRANSACTION_REFUSED, DELIVERY_ATTEMPT, BOUNCE, RECIPIENT_LOOKUP, ADMIN_ACTION,
)


def timestamp(when: float) -> str:
    return stamps.rfc3339_millis(when)


def parse_timestamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def record(event: str, when: float, **fields: Any) -> dict[str, Any]:
    """One record: `@timestamp` and `event` first, then the fields (None values left out)."""
    out: dict[str, Any] = {"@timestamp": timestamp(when), "event": event}
    out.update((name, value) for name, value in fields.items() if value is not None)
    return out


def reply_fields(reply: Reply | None) -> dict[str, Any]:
    if reply is None:
        return {}
    return {"reply_code": reply.code, "reply_enhanced": reply.enhanced or None, "reply_text": reply.text}


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)  # made once, not per line


def render(fields: Mapping[str, Any]) -> str:
    return _ENCODER.encode(fields) + "\n"


def naming(json_file: str | Path) -> DatedNaming:
    """Daily files beside `json_file`: its stem, `-YYYYMMDD`, its suffix."""
    path = Path(json_file)
    return DatedNaming(path.parent, path.stem + "-", "%Y%m%d", path.suffix)


def log_files(json_file: str | Path, since: float | None = None) -> list[Path]:
    """Every daily file of `json_file`, oldest first; with `since`, only the days from its own."""
    first = utc_day(since) if since is not None else None
    return [path for day, path in naming(json_file).days_on_disk() if first is None or day >= first]


def read_records(paths: Iterable[Path], since: float | None = None) -> Iterator[dict[str, Any]]:
    """Every record in `paths` (in order) stamped at or after `since`; bad lines are skipped
    (a line cut by a crash or a full disk must not stop a report)."""
    for path in paths:
        try:
            handle = open(path, encoding="utf-8", errors="replace")
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
            continue
        with handle:
            for line in handle:
                item = parse_line(line)
                if item is not None and (since is None or item["_when"] >= since):
                    yield item


def parse_line(line: str) -> dict[str, Any] | None:
    """One record with `_when` added, or None for a line that is not one (cut by a crash)."""
    try:
        item = json.loads(line)
        item["_when"] = parse_timestamp(item["@timestamp"])
    except (ValueError, KeyError, TypeError):
        return None
    return item


def read_new_records(path: Path, offset: int, max_bytes: int = 64 << 20) -> tuple[list[dict[str, Any]], int]:
    """The complete lines of `path` from byte `offset` (at most `max_bytes` of them) as records,
    and the offset after the last complete line: a line still being written is read next time."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(max_bytes)
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return [], offset
    end = data.rfind(b"\n") + 1
    records = [item for line in data[:end].decode("utf-8", "replace").splitlines()
               if (item := parse_line(line)) is not None]
    return records, offset + end
