"""Metrics: names, bounded labels, sampled gauges and the log writer's counters."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from mailgate.core.clock import FakeClock
from mailgate.observe import metrics as metrics_module
from mailgate.observe.metrics import Metrics, tls_protocol
from mailgate.observe.writer import LogWriter
from mailgate.queue.store import MessageState


def test_every_metric_is_named_mailgate_and_the_exposition_parses():
    metrics = Metrics()
    metrics.connection_opened("mx")
    names = {family.name for family in text_string_to_metric_families(metrics.render().decode())}
    assert names and all(name.startswith("mailgate_") for name in names)
    assert {"mailgate_connections_open", "mailgate_queue_messages", "mailgate_spool_free_bytes",
            "mailgate_acceptance_seconds", "mailgate_delivery_attempt_seconds"} <= names


def test_registries_are_private():
    first, second = Metrics(), Metrics()
    first.connection_opened("mx")
    assert second.registry.get_sample_value("mailgate_connections_total", {"listener": "mx"}) is None


def test_next_hop_labels_are_capped(monkeypatch):
    monkeypatch.setattr(metrics_module, "MAX_NEXT_HOPS", 3)
    metrics = Metrics()
    for n in range(6):
        metrics.delivery_attempt("delivered", f"hop{n}.example", "", None, None)
    metrics.delivery_attempt("delivered", "hop0.example", "", None, None)
    value = metrics.registry.get_sample_value
    assert value("mailgate_deliveries_total", {"outcome": "delivered", "next_hop": "hop0.example"}) == 2
    assert value("mailgate_deliveries_total", {"outcome": "delivered", "next_hop": "other"}) == 3


def test_tls_protocol_label_is_bounded():
    assert tls_protocol("TLSv1.3 TLS_AES_128_GCM_SHA256") == "TLSv1.3"
    assert tls_protocol("") == "none" and tls_protocol(None) == "none"
    assert tls_protocol("garbage from somewhere") == "other"


def test_queue_and_disk_gauges():
    metrics = Metrics()
    metrics.set_queue({MessageState.QUEUED: 4, "held": 1}, oldest_age=3600.5)
    metrics.set_free_disk(123456789)
    value = metrics.registry.get_sample_value
    assert value("mailgate_queue_messages", {"state": MessageState.QUEUED.value}) == 4
    assert value("mailgate_queue_messages", {"state": "held"}) == 1
    assert value("mailgate_queue_oldest_message_age_seconds") == 3600.5
    assert value("mailgate_spool_free_bytes") == 123456789
    metrics.set_queue({}, oldest_age=-5)
    assert value("mailgate_queue_oldest_message_age_seconds") == 0


def test_log_writer_counts_are_read_at_scrape_time(tmp_path):
    metrics = Metrics()
    writer = LogWriter([], FakeClock(), max_pending=1)
    metrics.watch_log_writer(writer)
    value = metrics.registry.get_sample_value
    assert value("mailgate_log_records_lost_total", {"reason": "queue_full"}) == 0
    writer.written, writer.dropped, writer.suppressed, writer.failed, writer.suspended = 9, 3, 2, 1, True
    assert value("mailgate_log_records_written_total") == 9
    assert value("mailgate_log_records_lost_total", {"reason": "queue_full"}) == 3
    assert value("mailgate_log_records_lost_total", {"reason": "suspended"}) == 2
    assert value("mailgate_log_records_lost_total", {"reason": "write_failed"}) == 1
    assert value("mailgate_log_writing_suspended") == 1


def test_acceptance_histogram():
    metrics = Metrics()
    metrics.transaction_accepted("outbound", "trusted_network", 100, "", 0.003)
    metrics.transaction_accepted("outbound", "trusted_network", 100, "", None)
    value = metrics.registry.get_sample_value
    assert value("mailgate_acceptance_seconds_count") == 1
    assert value("mailgate_acceptance_seconds_bucket", {"le": "0.005"}) == 1
    assert value("mailgate_tls_transactions_total", {"side": "receive", "protocol": "none"}) == 2


def test_the_cluster_node_name_is_a_label_of_the_build_info():
    from mailgate import __version__

    metrics = Metrics("mx-b")
    assert metrics.registry.get_sample_value("mailgate_build_info", {"version": __version__, "node": "mx-b"}) == 1
