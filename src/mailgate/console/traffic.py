"""The dashboard's traffic counts, fed from the JSON transaction log that every worker writes.

Owns: counting records into per-minute buckets (the last hour) and per-hour buckets (the last
days) for the five series the dashboard draws, the TLS share of accepted messages, and the top
senders, recipients, refused clients and refusal rules; and `LogFollower`, which reads only
what was appended to the daily files since the last poll.
Must not: render anything (charts.py, dashboard.py) or write the log (observe/).

Why the log and not the process's metrics: with several workers each process counts only its
own connections, while the JSON log holds every worker's records (observe/stats.py, behind
`mailgate stats`, reads the same files and counts the same way: delivered, deferred and bounced
are recipient attempts by outcome, refused counts refusals inside sessions by rule, and the
attempts to deliver mailgate's own DSNs are not deliveries).
Memory is bounded: buckets older than the window are dropped, and each hour keeps at most
MAX_KEYS_PER_HOUR distinct names per top list.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailgate.observe import jsonlog

SERIES = ("accepted", "refused", "delivered", "deferred", "bounced")
OUTCOME_SERIES = {"delivered": "delivered", "deferred": "deferred", "failed": "bounced"}
TOPS = ("senders", "recipients", "refused_clients", "refused_rules")
MAX_KEYS_PER_HOUR = 5000
MINUTE, HOUR = 60, 3600


@dataclass
class _Hour:
    counts: Counter[str] = field(default_factory=Counter)
    tops: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))


class Traffic:
    def __init__(self, days: int = 7) -> None:
        self.days = days
        self._minutes: dict[int, Counter[str]] = defaultdict(Counter)
        self._hours: dict[int, _Hour] = defaultdict(_Hour)
        self._dsn_ids: dict[str, float] = {}  # queue id of each DSN we queued -> when (bounce record first)

    def add(self, record: dict[str, Any]) -> None:
        when = record["_when"]
        event = record.get("event")
        hour = self._hours[int(when // HOUR)]
        if event == jsonlog.TRANSACTION_ACCEPTED:
            series = "accepted"
            hour.counts["tls"] += bool(record.get("tls"))
            _top(hour, "senders", record.get("sender") or "<>")
            for recipient in record.get("recipients", [])[:100]:
                _top(hour, "recipients", recipient)
        elif event == jsonlog.TRANSACTION_REFUSED:
            series = "refused"
            _top(hour, "refused_clients", record.get("client_ip") or "?")
            _top(hour, "refused_rules", record.get("rule") or record.get("stage") or "?")
        elif event == jsonlog.CONNECTION_REFUSED:
            _top(hour, "refused_clients", record.get("client_ip") or "?")
            _top(hour, "refused_rules", f"connection: {record.get('reason', '?')}")
            return
        elif event == jsonlog.BOUNCE and record.get("dsn_queue_id"):
            self._dsn_ids[record["dsn_queue_id"]] = when
            return
        elif event == jsonlog.DELIVERY_ATTEMPT and record.get("outcome") in OUTCOME_SERIES:
            if record.get("queue_id") in self._dsn_ids:  # our own DSN going out, as `mailgate stats`
                return
            series = OUTCOME_SERIES[record["outcome"]]
        else:
            return
        hour.counts[series] += 1
        self._minutes[int(when // MINUTE)][series] += 1

    def prune(self, now: float) -> None:
        for minute in [m for m in self._minutes if m < now // MINUTE - 60]:
            del self._minutes[minute]
        for hour in [h for h in self._hours if h < now // HOUR - 24 * self.days]:
            del self._hours[hour]
        for dsn in [d for d, when in self._dsn_ids.items() if when < now - HOUR * 24 * self.days]:
            del self._dsn_ids[dsn]

    def per_minute(self, now: float) -> list[tuple[float, dict[str, int]]]:
        """The last 60 minutes, oldest first: (start of the minute, counts per series)."""
        last = int(now // MINUTE)
        return [(m * MINUTE, {s: self._minutes.get(m, Counter())[s] for s in SERIES}) for m in range(last - 59, last + 1)]

    def per_hour(self, now: float) -> list[tuple[float, dict[str, int]]]:
        last = int(now // HOUR)
        empty = _Hour()
        return [(h * HOUR, {s: self._hours.get(h, empty).counts[s] for s in SERIES})
                for h in range(last - 24 * self.days + 1, last + 1)]

    def totals(self, now: float, hours: int = 24) -> Counter[str]:
        total: Counter[str] = Counter()
        for hour in self._recent(now, hours):
            total.update(hour.counts)
        return total

    def top(self, now: float, name: str, hours: int = 24, count: int = 10) -> list[tuple[str, int]]:
        total: Counter[str] = Counter()
        for hour in self._recent(now, hours):
            total.update(hour.tops.get(name, Counter()))
        return sorted(total.items(), key=lambda pair: (-pair[1], pair[0]))[:count]

    def _recent(self, now: float, hours: int) -> list[_Hour]:
        last = int(now // HOUR)
        return [self._hours[h] for h in range(last - hours + 1, last + 1) if h in self._hours]


def _top(hour: _Hour, name: str, key: str) -> None:
    counter = hour.tops[name]
    if key in counter or len(counter) < MAX_KEYS_PER_HOUR:
        counter[key] += 1


class LogFollower:
    """Feeds `traffic` with what the daily files of `json_file` gained since the last poll."""

    def __init__(self, json_file: str, traffic: Traffic) -> None:
        self.json_file = json_file
        self.traffic = traffic
        self._offsets: dict[Path, int] = {}

    def poll(self, now: float) -> None:
        """Blocking file reads: call it in a thread (asyncio.to_thread)."""
        if not self.json_file:
            return
        since = now - 24 * HOUR * self.traffic.days
        naming = jsonlog.naming(self.json_file)
        paths = [path for _day, path in naming.days_on_disk() if _modified(path) >= since]
        for path in paths:
            while True:
                records, offset = jsonlog.read_new_records(path, self._offsets.get(path, 0))
                if offset == self._offsets.get(path, 0):
                    break
                self._offsets[path] = offset
                for record in records:
                    if record["_when"] >= since:
                        self.traffic.add(record)
        for gone in set(self._offsets) - set(paths):
            del self._offsets[gone]
        self.traffic.prune(now)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # pruned since it was listed
        return 0.0
