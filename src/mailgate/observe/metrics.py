"""Prometheus metrics: one private registry, every metric named `mailgate_*`, one method per fact.

Owns: the metric definitions (names, labels, buckets), the methods the transaction log, the
listeners, the runner and the periodic samplers call, the log writer's counters exposed at
scrape time, and the exposition text (`render`).
Must not: serve HTTP (http.py), read the queue or the disk itself (the caller samples them and
calls `set_queue` / `set_free_disk`), or log.

A private CollectorRegistry (not prometheus_client's global one) keeps two Applications in one
process (tests) apart and keeps the process/platform collectors out unless asked for.
Label values that come from outside (next hops) are capped at MAX_NEXT_HOPS distinct values;
the rest count under `other`, so direct-to-MX delivery cannot grow the series without bound.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mailgate import __version__

MAX_NEXT_HOPS = 200
OTHER = "other"
# Seconds from end of data to the 250 (spool commit with fsync, screening).
ACCEPTANCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Seconds of one delivery attempt (connect, TLS, transaction).
ATTEMPT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Seconds from arrival to final delivery; retries stretch it to the 5-day lifetime (RFC 5321
# §4.5.4.1).
DELAY_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 5 * 86400)


class WriterCounters(Protocol):
    written: int
    dropped: int
    suppressed: int
    failed: int
    suspended: bool


class Metrics:
    def __init__(self, node: str = "") -> None:
        """`node`: this node's name in a cluster (queue.node_name), a label of mailgate_build_info
        that a query joins on (`* on(instance) group_left(node) mailgate_build_info`)."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("mailgate_build", "mailgate version and cluster node name.", registry=r).info(
            {"version": __version__, "node": node}
        )
        self._open = Gauge("mailgate_connections_open", "SMTP connections now open.", ["listener"], registry=r)
        self._connections = Counter("mailgate_connections", "SMTP connections accepted.", ["listener"], registry=r)
        self._refused_connections = Counter(
            "mailgate_connections_refused", "Connections refused before the greeting, by reason.",
            ["listener", "reason"], registry=r,
        )
        self._accepted = Counter(
            "mailgate_transactions_accepted", "Messages accepted (250 after DATA), by direction "
            "and the relay rule that permitted them.", ["direction", "rule"], registry=r,
        )
        self._refused = Counter(
            "mailgate_transactions_refused", "Refusals inside a session, by stage and rule.",
            ["stage", "rule"], registry=r,
        )
        self._received_bytes = Counter(
            "mailgate_received_message_bytes", "Bytes of accepted messages.", ["direction"], registry=r
        )
        self._smtp_bytes = Counter(
            "mailgate_smtp_bytes",
            "Bytes of SMTP commands and replies on inbound sessions (added at each transaction's end "
            "and at the close).",
            ["direction"], registry=r,
        )
        self._deliveries = Counter(
            "mailgate_deliveries", "Recipient delivery attempts, by outcome and next hop.",
            ["outcome", "next_hop"], registry=r,
        )
        self._tls = Counter(
            "mailgate_tls_transactions", "Transactions by side and TLS protocol (`none` in clear).",
            ["side", "protocol"], registry=r,
        )
        self._dsn = Counter("mailgate_dsn_sent", "Delivery status notifications queued, by kind.", ["kind"], registry=r)
        self._queue = Gauge("mailgate_queue_messages", "Messages in the queue, by state.", ["state"], registry=r)
        self._oldest = Gauge(
            "mailgate_queue_oldest_message_age_seconds", "Age of the oldest queued message (0 when empty).",
            registry=r,
        )
        self._free_disk = Gauge("mailgate_spool_free_bytes", "Free bytes on the spool's file system.", registry=r)
        self._acceptance = Histogram(
            "mailgate_acceptance_seconds", "End of data to the 250 reply.", buckets=ACCEPTANCE_BUCKETS, registry=r
        )
        self._attempt = Histogram(
            "mailgate_delivery_attempt_seconds", "Duration of one delivery attempt.", buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self._delay = Histogram(
            "mailgate_delivery_delay_seconds", "Arrival to successful delivery, per recipient.",
            buckets=DELAY_BUCKETS, registry=r,
        )
        self._recipient_lookups = Counter(
            "mailgate_recipient_lookups", "Recipient source look-ups at RCPT, by source, result "
            "(found, not_found, unavailable) and whether the cache answered.", ["source", "result", "cache"], registry=r,
        )
        self._next_hops: set[str] = set()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # labels() lookups, cached

    # --- connections -------------------------------------------------------------------------
    def connection_opened(self, listener: str) -> None:
        self._child(self._open, listener).inc()
        self._child(self._connections, listener).inc()

    def connection_closed(self, listener: str) -> None:
        self._child(self._open, listener).dec()

    def connection_refused(self, listener: str, reason: str) -> None:
        """reason: `limit`, `disk`, `blocklist`, `dnsbl`, `proxy` (a short fixed word, never an
        address)."""
        self._child(self._refused_connections, listener, reason).inc()

    def smtp_bytes(self, bytes_in: int, bytes_out: int) -> None:
        self._child(self._smtp_bytes, "in").inc(bytes_in)
        self._child(self._smtp_bytes, "out").inc(bytes_out)

    # --- transactions ------------------------------------------------------------------------
    def transaction_accepted(self, direction: str, rule: str, size: int, tls: str, elapsed: float | None) -> None:
        self._child(self._accepted, direction, rule or "-").inc()
        self._child(self._received_bytes, direction).inc(size)
        self._child(self._tls, "receive", tls_protocol(tls)).inc()
        if elapsed is not None:
            self._acceptance.observe(elapsed)

    def transaction_refused(self, stage: str, rule: str) -> None:
        self._child(self._refused, stage, rule or "-").inc()

    # --- delivery ----------------------------------------------------------------------------
    def delivery_attempt(
        self, outcome: str, next_hop: str, tls: str, elapsed: float | None, delay: float | None
    ) -> None:
        """One recipient's attempt; outcome: delivered, deferred or failed."""
        self._child(self._deliveries, outcome, self._hop_label(next_hop)).inc()
        self._child(self._tls, "deliver", tls_protocol(tls)).inc()
        if elapsed is not None:
            self._attempt.observe(elapsed)
        if delay is not None and outcome == "delivered":
            self._delay.observe(delay)

    def recipient_lookup(self, source: str, result: str, cached: bool) -> None:
        """source: a configured source name (bounded by the configuration)."""
        self._child(self._recipient_lookups, source, result, "hit" if cached else "miss").inc()

    def dsn_sent(self, kind: str) -> None:
        self._child(self._dsn, kind).inc()

    # --- sampled by the caller ---------------------------------------------------------------
    def set_queue(self, counts: Mapping[str, int], oldest_age: float) -> None:
        """From a periodic task: `count_by_state()` and now minus `oldest_created()`."""
        for state, count in counts.items():
            self._child(self._queue, str(getattr(state, "value", state))).set(count)
        self._oldest.set(max(0.0, oldest_age))

    def set_free_disk(self, free_bytes: int) -> None:
        self._free_disk.set(free_bytes)

    def watch_log_writer(self, writer: WriterCounters) -> None:
        """Expose the log writer's written, dropped, suppressed and failed counts at every scrape."""
        self.registry.register(_WriterCollector(writer))

    def render(self) -> bytes:
        """The text exposition format (what /metrics returns)."""
        return generate_latest(self.registry)

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: label values are bounded, and the lookup is hot."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _hop_label(self, next_hop: str) -> str:
        hop = next_hop or "-"
        if hop in self._next_hops:
            return hop
        if len(self._next_hops) >= MAX_NEXT_HOPS:
            return OTHER
        self._next_hops.add(hop)
        return hop


def tls_protocol(description: str | None) -> str:
    """`TLSv1.3 TLS_AES_256_GCM_SHA384` -> `TLSv1.3`; no TLS -> `none` (bounded label values)."""
    if not description:
        return "none"
    first = description.split()[0]
    return first if first.startswith(("TLS", "SSL")) else "other"


class _WriterCollector:
    def __init__(self, writer: WriterCounters) -> None:
        self._writer = writer

    def describe(self) -> list[Metric]:
        return []  # described at collect time; the writer may be replaced on reload

    def collect(self) -> Iterator[Metric]:
        lost = CounterMetricFamily(
            "mailgate_log_records_lost", "Transaction log records not written, by reason.", labels=["reason"]
        )
        lost.add_metric(["queue_full"], self._writer.dropped)
        lost.add_metric(["suspended"], self._writer.suppressed)
        lost.add_metric(["write_failed"], self._writer.failed)
        yield lost
        yield CounterMetricFamily(
            "mailgate_log_records_written", "Transaction log records written.", value=self._writer.written
        )
        yield GaugeMetricFamily(
            "mailgate_log_writing_suspended", "1 while the disk guard has suspended log writing.",
            value=1 if self._writer.suspended else 0,
        )
