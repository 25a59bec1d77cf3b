"""`mailgate stats`: a pflogsumm-like summary of the JSON transaction log.

Owns: counting records into a summary (received, delivered, deferred, bounced, refused by rule,
top senders, recipients and domains, traffic per hour) and printing it as text or JSON.
Must not: find or open files (jsonlog.read_records, cli/stats_cmd.py), or know the W3C log.

Counting follows pflogsumm: "received" counts accepted messages, "delivered", "deferred" and
"bounced" count recipient attempts by outcome (a recipient deferred twice counts twice in
`deferred`; `deferred_messages` counts distinct queue ids), "rejected" counts refusals.
Hours are UTC, as in the log.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from mailgate.observe import jsonlog

HOUR_COLUMNS = ("received", "delivered", "deferred", "bounced", "rejected")


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[1].lower() if "@" in address else address.lower()


def _address(address: str) -> str:
    """Domain lowercased, local part kept (RFC 5321 §2.4: only the local part is case-sensitive)."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


def _sender(address: str) -> str:
    return _address(address) if address else "<>"  # the null sender (bounces)


def _hour(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%d %H:00")


def summarise(records: Iterable[dict[str, Any]], top: int = 10) -> dict[str, Any]:
    """The summary of `records` (as jsonlog.read_records yields them) as a JSON-ready dict.

    One pass over the records, one branch per event kind; kept in one function so the counting
    rules read together.
    """
    totals: Counter[str] = Counter()
    refused_by_rule: Counter[str] = Counter()
    connection_refusals: Counter[str] = Counter()
    senders: Counter[str] = Counter()
    sender_domains: Counter[str] = Counter()
    recipients: Counter[str] = Counter()
    recipient_domains: dict[str, Counter[str]] = defaultdict(Counter)
    per_hour: dict[str, Counter[str]] = defaultdict(Counter)
    deferred_ids: set[str] = set()
    dsn_kinds: Counter[str] = Counter()
    dsn_ids: set[str] = set()  # queue ids of the DSNs mailgate queued (their bounce record comes first)
    first = last = None
    for item in records:
        when = item["_when"]
        first = when if first is None else min(first, when)
        last = when if last is None else max(last, when)
        hour = per_hour[_hour(when)]
        event = item.get("event")
        if event == jsonlog.TRANSACTION_ACCEPTED:
            totals["received"] += 1
            totals["received_bytes"] += int(item.get("size", 0))
            sender = _sender(item.get("sender", ""))
            senders[sender] += 1
            sender_domains[_domain(sender) if sender != "<>" else "<>"] += 1
            for recipient in item.get("recipients", []):
                recipients[_address(recipient)] += 1
            totals["received_recipients"] += int(item.get("recipient_count", 0))
            hour["received"] += 1
        elif event == jsonlog.TRANSACTION_REFUSED:
            totals["rejected"] += 1
            refused_by_rule[item.get("rule") or f"{item.get('stage', '?')} {item.get('reply_code', '')}".strip()] += 1
            hour["rejected"] += 1
        elif event == jsonlog.DELIVERY_ATTEMPT:
            if item.get("queue_id") in dsn_ids:  # our own DSN going out: not a message delivered
                totals["dsn_attempts"] += 1
                continue
            outcome = item.get("outcome", "")
            column = {"delivered": "delivered", "deferred": "deferred", "failed": "bounced"}.get(outcome)
            if column is None:
                continue
            totals[column] += 1
            if column == "delivered":
                totals["delivered_bytes"] += int(item.get("size") or 0)
            if column == "deferred":
                deferred_ids.add(str(item.get("queue_id")))
            recipient_domains[_domain(item.get("recipient", ""))][column] += 1
            hour[column] += 1
        elif event == jsonlog.BOUNCE:
            dsn_kinds[item.get("kind", "?")] += 1
            dsn_ids.add(item.get("dsn_queue_id"))
        elif event == jsonlog.CONNECTION_OPENED:
            totals["connections"] += 1
        elif event == jsonlog.CONNECTION_REFUSED:
            connection_refusals[item.get("reason", "?")] += 1
    domains = sorted(
        recipient_domains.items(), key=lambda pair: (-sum(pair[1].values()), pair[0])
    )[:top]
    return {
        "first": jsonlog.timestamp(first) if first is not None else None,
        "last": jsonlog.timestamp(last) if last is not None else None,
        "received": totals["received"],
        "received_bytes": totals["received_bytes"],
        "received_recipients": totals["received_recipients"],
        "delivered": totals["delivered"],
        "delivered_bytes": totals["delivered_bytes"],
        "deferred": totals["deferred"],
        "deferred_messages": len(deferred_ids),
        "bounced": totals["bounced"],
        "rejected": totals["rejected"],
        "connections": totals["connections"],
        "dsn_sent": dict(sorted(dsn_kinds.items())),
        "dsn_delivery_attempts": totals["dsn_attempts"],
        "refused_by_rule": _ranked(refused_by_rule, None),
        "connections_refused": _ranked(connection_refusals, None),
        "top_senders": _ranked(senders, top),
        "top_sender_domains": _ranked(sender_domains, top),
        "top_recipients": _ranked(recipients, top),
        "top_recipient_domains": [
            {"domain": name, **{c: counts[c] for c in ("delivered", "deferred", "bounced")}}
            for name, counts in domains
        ],
        "per_hour": [
            {"hour": hour, **{c: per_hour[hour][c] for c in HOUR_COLUMNS}} for hour in sorted(per_hour)
        ],
    }


def _ranked(counter: Counter[str], top: int | None) -> list[dict[str, Any]]:
    ordered = sorted(counter.items(), key=lambda pair: (-pair[1], pair[0]))
    return [{"name": name, "count": count} for name, count in ordered[:top]]


def format_report(summary: dict[str, Any]) -> str:
    """The text report, pflogsumm's layout: grand totals, then one table per section."""
    s = summary
    out = [f"mailgate log summary {s['first'] or '-'} .. {s['last'] or '-'} (UTC)", "", "Grand totals", "-" * 12]
    for label, value in (
        ("received", s["received"]), ("delivered", s["delivered"]),
        ("deferred", s["deferred"]), ("deferred messages", s["deferred_messages"]),
        ("bounced", s["bounced"]), ("rejected", s["rejected"]), ("connections", s["connections"]),
        ("bytes received", _bytes(s["received_bytes"])), ("bytes delivered", _bytes(s["delivered_bytes"])),
        ("DSNs sent", sum(s["dsn_sent"].values())),
        *((f"DSNs sent ({kind})", count) for kind, count in s["dsn_sent"].items()),
        ("DSN delivery attempts (not counted above)", s["dsn_delivery_attempts"]),
    ):
        out.append(f"  {value!s:>12}  {label}")
    for title, rows in (
        ("Refused by rule", s["refused_by_rule"]),
        ("Connections refused", s["connections_refused"]),
        ("Senders by message count", s["top_senders"]),
        ("Sender domains by message count", s["top_sender_domains"]),
        ("Recipients by message count", s["top_recipients"]),
    ):
        out += ["", title, "-" * len(title)]
        out += [f"  {row['count']:>8}  {row['name']}" for row in rows] or ["  none"]
    out += ["", "Recipient domains", "-" * 17, f"  {'delivered':>9} {'deferred':>9} {'bounced':>9}  domain"]
    out += [
        f"  {row['delivered']:>9} {row['deferred']:>9} {row['bounced']:>9}  {row['domain']}"
        for row in s["top_recipient_domains"]
    ] or ["  none"]
    out += ["", "Per-hour traffic (UTC)", "-" * 22, "  hour              " + "".join(f"{c:>10}" for c in HOUR_COLUMNS)]
    out += [f"  {row['hour']}  " + "".join(f"{row[c]:>10}" for c in HOUR_COLUMNS) for row in s["per_hour"]] or [
        "  none"
    ]
    return "\n".join(out) + "\n"


def _bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
