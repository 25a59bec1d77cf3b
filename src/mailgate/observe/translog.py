"""The transaction log: a typed API with one method per event (chasquid's maillog, SPEC §6).

Owns: what each event records, in which log: every SMTP command goes to the W3C log (one line,
IIS style); connections, accepted and refused transactions (with the queue id and the rule that
decided), delivery attempts (next hop, reply, TLS) and bounces go to the JSON-lines log. Each
event also updates the metrics, so the logs and the counters never disagree. Sessions are
remembered from `connection_opened` to `connection_closed`, so later calls pass only the id.
Must not: block (the writer thread does the I/O), format lines (w3c.py, jsonlog.py), or hold
credentials: AUTH arguments are cut to the mechanism name, SASL response lines are never logged.

Every method is cheap and safe to call on the event loop; every log and the metrics are
optional (None turns them off).

The start-up self-audit's own connections (`audit_from` the untrusted loopback sources it uses)
leave no record and move no counter: the audit writes one `self_audit` record per listener instead,
so that a restart does not look like a burst of refusals.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailgate import __version__
from mailgate.core.clock import Clock
from mailgate.core.reply import Reply
from mailgate.core.status import Outcome, RecipientState
from mailgate.observe import jsonlog, w3c
from mailgate.observe.metrics import Metrics
from mailgate.observe.writer import DEFAULT_MAX_PENDING, DatedNaming, LogStream, LogWriter

SOFTWARE = f"mailgate {__version__}"
OUTCOME_NAMES = {
    RecipientState.DELIVERED: "delivered",
    RecipientState.QUEUED: "deferred",  # a transient reply: tried again later
    RecipientState.FAILED: "failed",
}


_session_prefix = secrets.token_hex(3)
_session_numbers = itertools.count(1)


def _new_prefix() -> None:
    global _session_prefix
    _session_prefix = secrets.token_hex(3)


os.register_at_fork(after_in_child=_new_prefix)  # each worker process its own prefix


def new_session_id() -> str:
    """A short unique id naming one connection in every record about it: a random prefix per
    process and a counter (no system call per connection)."""
    return f"{_session_prefix}{next(_session_numbers):06x}"


@dataclass
class _Connection:
    client_ip: str
    client_port: int
    listener: str
    server_ip: str
    server_port: int
    opened: float
    commands: int = 0
    messages: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    metered_in: int = 0  # of bytes_in, what the metrics counted already
    metered_out: int = 0


class TransactionLog:
    def __init__(
        self,
        clock: Clock,
        hostname: str,
        *,
        writer: LogWriter | None = None,
        w3c_stream: LogStream | None = None,
        json_stream: LogStream | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._clock = clock
        self._hostname = hostname
        self.writer = writer
        self._w3c = w3c_stream if writer else None
        self._json = json_stream if writer else None
        self.metrics = metrics
        self._connections: dict[str, _Connection] = {}
        self._audit_sources: frozenset[str] = frozenset()
        self._audit_sessions: set[str] = set()

    # --- the start-up self-audit -------------------------------------------------------------
    def audit_from(self, sources: frozenset[str]) -> None:
        """Connections from `sources` are the self-audit's until called again with an empty set
        (connections already open stay the audit's until they close)."""
        self._audit_sources = sources

    def _is_audit(self, client_ip: str) -> bool:
        return bool(self._audit_sources) and client_ip.removeprefix("::ffff:") in self._audit_sources

    def self_audit(self, listener: str, verdict: str, forms: int, source: str, detail: str = "") -> None:
        """The audit's summary for one listener (verdict: not an open relay, OPEN, INCONCLUSIVE)."""
        self._emit_json(lambda: jsonlog.record(
            jsonlog.SELF_AUDIT, self._clock.now(), listener=listener, verdict=verdict, forms=forms,
            client_ip=source, detail=detail or None,
        ))

    # --- connections -------------------------------------------------------------------------
    def connection_opened(
        self, session_id: str, client_ip: str, client_port: int, listener: str, server_ip: str, server_port: int
    ) -> None:
        """Call once per accepted connection; `connection_closed` must follow (in a finally)."""
        if self._is_audit(client_ip):
            self._audit_sessions.add(session_id)
            return
        now = self._clock.now()
        self._connections[session_id] = _Connection(client_ip, client_port, listener, server_ip, server_port, now)
        if self.metrics:
            self.metrics.connection_opened(listener)
        self._emit_json(lambda: jsonlog.record(
            jsonlog.CONNECTION_OPENED, now, session_id=session_id, client_ip=client_ip,
            client_port=client_port, listener=listener, server_ip=server_ip, server_port=server_port,
        ))

    def connection_closed(self, session_id: str, reason: str = "quit") -> None:
        """reason: quit, timeout, errors, framing (BDAT size unreadable), refused, dropped (peer
        went away), shutdown."""
        now = self._clock.now()
        self._audit_sessions.discard(session_id)
        connection = self._connections.pop(session_id, None)
        if connection is None:
            return
        if self.metrics:
            self._meter(connection)
            self.metrics.connection_closed(connection.listener)
        self._emit_json(lambda: jsonlog.record(
            jsonlog.CONNECTION_CLOSED, now, session_id=session_id, client_ip=connection.client_ip,
            listener=connection.listener, reason=reason, duration=round(now - connection.opened, 3),
            commands=connection.commands, messages=connection.messages,
            bytes_in=connection.bytes_in, bytes_out=connection.bytes_out,
        ))

    def connection_refused(
        self, client_ip: str, client_port: int, listener: str, reason: str, reply: Reply | None
    ) -> None:
        """Refused before any session; reason is a short fixed word used as a metric label:
        `limit` (connection limits), `disk` (hard back-pressure), `blocklist`, `dnsbl`, or `proxy`
        (a missing, malformed or unauthorised PROXY header: dropped with no reply, `reply` None,
        and `client_ip` is the load balancer's or whoever connected)."""
        if self._is_audit(client_ip):
            return
        if self.metrics:
            self.metrics.connection_refused(listener, reason)
        self._emit_json(lambda: jsonlog.record(
            jsonlog.CONNECTION_REFUSED, self._clock.now(), client_ip=client_ip, client_port=client_port,
            listener=listener, reason=reason, **jsonlog.reply_fields(reply),
        ))

    # --- commands (W3C) ----------------------------------------------------------------------
    def command(
        self, session_id: str, verb: str, argument: str, status_code: int, bytes_in: int, bytes_out: int,
        elapsed_ms: int, helo: str = "",
    ) -> None:
        """One W3C line per command and its reply. For DATA/BDAT log once, at the final reply,
        with the queue id as the argument and the message size as bytes_in (as IIS does)."""
        if session_id in self._audit_sessions:
            return
        now = self._clock.now()
        verb = verb.upper()
        if verb == "AUTH":
            argument = argument.split(" ", 1)[0]  # never the initial response (credentials)
        connection = self._connections.get(session_id)
        if connection is not None:  # the metrics count them at the transaction's end or the close
            connection.commands += 1
            connection.bytes_in += bytes_in
            connection.bytes_out += bytes_out
        elif self.metrics:
            self.metrics.smtp_bytes(bytes_in, bytes_out)
        if self._w3c is None or self.writer is None:
            return
        self.writer.emit(self._w3c, now, {
            "when": now,
            "c-ip": connection.client_ip if connection else None,
            "cs-username": helo,
            "s-sitename": connection.listener if connection else None,
            "s-computername": self._hostname,
            "s-ip": connection.server_ip if connection else None,
            "s-port": connection.server_port if connection else None,
            "cs-method": verb,
            "cs-uri-query": w3c.query_value(argument),
            "sc-status": status_code,
            "sc-bytes": bytes_out,
            "cs-bytes": bytes_in,
            "time-taken": int(elapsed_ms),
        })

    # --- transactions ------------------------------------------------------------------------
    def transaction_accepted(
        self, session_id: str, queue_id: str, sender: str, recipients: Sequence[str], size: int, rule: str,
        *, tls: str = "", auth_user: str = "", direction: str = "inbound", helo: str = "",
        elapsed: float | None = None, message_id: str = "",
    ) -> None:
        """The 250 after DATA. sender "" is the null sender; rule: the relay rule that permitted
        the (first) recipient; tls: e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384" or ""; elapsed:
        seconds from end of data to the 250; message_id: the Message-ID field's value (the
        console's message trace finds a message by it)."""
        if session_id in self._audit_sessions:
            return
        connection = self._connections.get(session_id)
        if connection is not None:
            connection.messages += 1
        if self.metrics:
            self.metrics.transaction_accepted(direction, rule, size, tls, elapsed)
            if connection is not None:
                self._meter(connection)
        self._emit_json(lambda: jsonlog.record(
            jsonlog.TRANSACTION_ACCEPTED, self._clock.now(), session_id=session_id, queue_id=queue_id,
            sender=sender, recipients=list(recipients), recipient_count=len(recipients), size=size,
            client_ip=connection.client_ip if connection else None,
            listener=connection.listener if connection else None, helo=helo or None,
            rule=rule, tls=tls or None, auth_user=auth_user or None, direction=direction,
            elapsed=round(elapsed, 6) if elapsed is not None else None, message_id=message_id or None,
        ))

    def transaction_refused(
        self, session_id: str, stage: str, reply: Reply, rule: str = "", *, sender: str = "", recipient: str = ""
    ) -> None:
        """A refusal inside a session. stage: mail, rcpt, data, auth; rule: the policy rule
        that decided, or a short word for protocol refusals (size, bare_lf, loop, commit)."""
        if session_id in self._audit_sessions:
            return
        connection = self._connections.get(session_id)
        if self.metrics:
            self.metrics.transaction_refused(stage, rule)
            if connection is not None:
                self._meter(connection)
        self._emit_json(lambda: jsonlog.record(
            jsonlog.TRANSACTION_REFUSED, self._clock.now(), session_id=session_id, stage=stage,
            rule=rule or None, sender=sender, recipient=recipient or None,
            client_ip=connection.client_ip if connection else None,
            listener=connection.listener if connection else None, **jsonlog.reply_fields(reply),
        ))

    def recipient_lookup(self, session_id: str, recipient: str, source: str, result: str, cached: bool) -> None:
        """One recipient source asked at RCPT; result: found, not_found or unavailable."""
        if self.metrics:
            self.metrics.recipient_lookup(source, result, cached)
        self._emit_json(lambda: jsonlog.record(
            jsonlog.RECIPIENT_LOOKUP, self._clock.now(), session_id=session_id, recipient=recipient,
            source=source, result=result, cached=cached,
        ))

    # --- delivery ----------------------------------------------------------------------------
    def delivery_attempt(
        self, queue_id: str, recipient: str, next_hop: str, outcome: Outcome, *, sender: str = "",
        tls: str = "", elapsed: float | None = None, delay: float | None = None, size: int | None = None,
    ) -> None:
        """One recipient's attempt. next_hop: the route's key (or "" when routing failed);
        elapsed: seconds of the attempt; delay: seconds since the message arrived."""
        name = OUTCOME_NAMES[outcome.state]
        if self.metrics:
            self.metrics.delivery_attempt(name, next_hop, tls, elapsed, delay)
        self._emit_json(lambda: jsonlog.record(
            jsonlog.DELIVERY_ATTEMPT, self._clock.now(), queue_id=queue_id, sender=sender,
            recipient=recipient, next_hop=next_hop or None, remote_mta=outcome.remote_mta,
            outcome=name, tls=tls or None, size=size,
            elapsed=round(elapsed, 6) if elapsed is not None else None,
            delay=round(delay, 3) if delay is not None else None, **jsonlog.reply_fields(outcome.reply),
        ))

    def bounce(self, queue_id: str, dsn_queue_id: str, kind: str, sender: str, recipients: Sequence[str]) -> None:
        """A DSN was queued (kind: failed or delayed) to `sender` about `recipients`."""
        if self.metrics:
            self.metrics.dsn_sent(kind)
        self._emit_json(lambda: jsonlog.record(
            jsonlog.BOUNCE, self._clock.now(), queue_id=queue_id, dsn_queue_id=dsn_queue_id, kind=kind,
            sender=sender, recipients=list(recipients),
        ))

    # --- administration --------------------------------------------------------------------
    def admin_action(self, admin: str, action: str, queue_ids: Sequence[str], *, client_ip: str = "",
                     reason: str = "") -> None:
        """An administrator changed the queue from the web console (hold, release, retry,
        delete, bounce): who, what, on which messages, from where."""
        self._emit_json(lambda: jsonlog.record(
            jsonlog.ADMIN_ACTION, self._clock.now(), admin=admin, action=action, queue_ids=list(queue_ids),
            client_ip=client_ip or None, reason=reason or None,
        ))

    # --- life cycle --------------------------------------------------------------------------
    def flush(self, timeout: float = 5.0) -> bool:
        return self.writer.flush(timeout) if self.writer else True

    def close(self) -> None:
        if self.writer:
            self.writer.close()

    def _meter(self, connection: _Connection) -> None:
        """Add the session's bytes since the last call to the metrics: once per transaction and
        at the close instead of at every command (two counter updates each)."""
        assert self.metrics is not None
        self.metrics.smtp_bytes(
            connection.bytes_in - connection.metered_in, connection.bytes_out - connection.metered_out
        )
        connection.metered_in, connection.metered_out = connection.bytes_in, connection.bytes_out

    def _emit_json(self, build: Callable[[], dict[str, Any]]) -> None:
        """Records are built only when the JSON log is on (the hot path pays nothing otherwise)."""
        if self._json is not None and self.writer is not None:
            self.writer.emit(self._json, self._clock.now(), build())


def open_transaction_log(
    clock: Clock,
    hostname: str,
    *,
    w3c_dir: str = "",
    json_file: str = "",
    retention_days: int = 30,
    metrics: Metrics | None = None,
    max_pending: int = DEFAULT_MAX_PENDING,
) -> TransactionLog:
    """The log the application uses: streams for the configured files, the writer started, its
    counters exposed in `metrics`. Empty w3c_dir / json_file turn that log off."""
    streams = []
    w3c_stream = json_stream = None
    if w3c_dir:
        w3c_stream = LogStream(
            "w3c", DatedNaming(Path(w3c_dir), "ex", "%y%m%d", ".log"), w3c.line,
            header=lambda when: w3c.header(when, SOFTWARE),
        )
        streams.append(w3c_stream)
    if json_file:
        json_stream = LogStream("json", jsonlog.naming(json_file), jsonlog.render)
        streams.append(json_stream)
    writer = None
    if streams:
        writer = LogWriter(streams, clock, retention_days=retention_days, max_pending=max_pending)
        writer.start()
        if metrics:
            metrics.watch_log_writer(writer)
    return TransactionLog(
        clock, hostname, writer=writer, w3c_stream=w3c_stream, json_stream=json_stream, metrics=metrics
    )
