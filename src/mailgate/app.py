"""The composition root: configuration in, running listeners, runner and control socket out.

Owns: choosing the concrete implementations (SQLite store, dnspython resolver, SMTP transport,
file user store) and wiring them together, signal handling (SIGHUP reload keeping the old
configuration on error, SIGTERM/SIGINT drain) and the order of start and stop.
Must not: contain protocol, policy or delivery logic of its own, translate configuration
(app_config.py), check it (preflight.py) or observe (observe/: logs, gauges, readiness).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from mailgate.app_config import (
    StartupError, build_authenticator, build_screener, control_socket_path, listener_profiles, listener_settings,
    policy_settings, postmaster_domain, rate_limits, recipient_validation, retry_schedule, routing_settings, runner_settings,
)
from mailgate.auth.lockout import AuthFailureTracker
from mailgate.auth.store import FileUserStore
from mailgate.config.loader import EMBEDDED_SOURCE, Config, ConfigError, load_file
from mailgate.config.reload import reloadable
from mailgate.config.types import parse_host_port
from mailgate.core.address import normalise_domain
from mailgate.core.clock import Clock, SystemClock
from mailgate.delivery.admin import QueueAdmin
from mailgate.delivery.bouncer import Bouncer
from mailgate.delivery.routing import Router
from mailgate.delivery.runner import DeliveryRunner
from mailgate.delivery.maildir import MaildirTransport
from mailgate.delivery.request import RoutedTransport
from mailgate.delivery.transport import SmtpTransport
from mailgate.dns.resolver import DnsPythonResolver
from mailgate.observe import diagnostics
from mailgate.observe.delivery_log import DeliveryObserver
from mailgate.observe.gauges import update_gauges
from mailgate.observe.http import ObserveServer
from mailgate.observe.metrics import Metrics
from mailgate.observe.readiness import readiness_problems
from mailgate.observe.translog import open_transaction_log
from mailgate.preflight import startup_problems
from mailgate.policy.relay import RelayPolicy
from mailgate.policy.shared_limits import RateTables
from mailgate.queue.sqlite_store import SqliteQueueStore
from mailgate.server.control import ControlServer
from mailgate.server.diskguard import DiskGuard, DiskState
from mailgate.server import listen_sockets
from mailgate.server.listener import Listener
from mailgate.server.privileges import PrivilegeError, drop_privileges, resolve_identity, spool_ownership_problems
from mailgate.server.context import ListenerProfile, Reception
from mailgate.server.session import Session
from mailgate.screen.health import probe_periodically
from mailgate.start_gate import StartGate
from mailgate.tools.audit import AUDIT_SOURCES, AuditSummary, AuditTarget, self_audit

log = logging.getLogger("mailgate")


async def open_offline_admin(config: Config) -> tuple[QueueAdmin, Callable[[], Awaitable[None]]]:
    """A QueueAdmin on the store of a stopped server (for `mailgate queue`)."""
    clock = SystemClock()
    store = SqliteQueueStore(config.server.spool_dir, clock=clock)
    await store.open()
    bouncer = Bouncer(store, config.server.hostname, config.delivery.delay_warning, config.delivery.max_lifetime)
    return QueueAdmin(store, bouncer, clock, lambda: None), store.close


async def recover_store(store: SqliteQueueStore) -> None:
    recovered = await store.recover()
    if recovered:
        log.info("recovered %d message(s) left in delivery by a previous run", recovered)


async def recover_offline(config: Config) -> None:
    """Recover the store of a stopped server (the supervisor, before it starts its workers)."""
    store = SqliteQueueStore(config.server.spool_dir)
    await store.open()
    try:
        await recover_store(store)
    finally:
        await store.close()


class Application:
    def __init__(
        self, config: Config, *, clock: Clock | None = None, worker_index: int = 0, workers: int = 1,
        start_gate: StartGate | None = None, rate_tables: RateTables | None = None,
    ) -> None:
        self.config = config
        self._start_gate = start_gate
        # With several workers: the shared memory all of them count message rates in.
        self._rate_tables = rate_tables
        self.clock = clock or SystemClock()
        self.worker_index = worker_index
        self.workers = workers
        problems = startup_problems(config)
        if problems:
            raise StartupError("\n".join(problems))
        self.profiles = listener_profiles(config)
        self.metrics = Metrics()
        self.log = open_transaction_log(
            self.clock, config.server.hostname, w3c_dir=config.log.w3c_dir, json_file=config.log.json_file,
            retention_days=config.log.retention_days, metrics=self.metrics, max_pending=config.log.queue_limit,
        )
        self.deliveries = DeliveryObserver(self.log, self.clock)
        self.store = SqliteQueueStore(config.server.spool_dir, clock=self.clock)
        dns = config.dns
        self.resolver = DnsPythonResolver(list(dns.nameservers) or None, dns.port, dns.timeout)
        self.router = Router(routing_settings(config), self.resolver)
        delivery = config.delivery
        self.transport = RoutedTransport(
            SmtpTransport(
                connect_timeout=delivery.connect_timeout,
                idle_timeout=delivery.connection_idle,
                max_connections=delivery.max_connections,
                max_per_destination=delivery.max_per_destination,
            ),
            MaildirTransport(),
        )
        self.bouncer = Bouncer(
            self.store, config.server.hostname, delivery.delay_warning, delivery.max_lifetime,
            on_queued=self._wake_runner,
            on_dsn=self.deliveries.dsn,
        )
        self.runner = DeliveryRunner(
            self.store, self.router, self.transport, self.bouncer, retry_schedule(config), self.clock,
            runner_settings(config),
            on_attempt=self.deliveries.attempt,
        )
        server = config.server
        self.disk = DiskGuard(
            server.spool_dir, server.disk_soft_free, server.disk_hard_free, server.disk_soft_free_inodes,
            server.disk_hard_free_inodes, server.disk_check_interval,
        )
        self.disk.subscribe(self._disk_state_changed)
        self._disk_task: asyncio.Task | None = None
        self.users = FileUserStore(config.server.users_file)
        self.policy = RelayPolicy(policy_settings(config), allowed_senders=self.users.allowed_senders)
        self.reception = Reception(
            hostname=config.server.hostname,
            policy=self.policy,
            users=self.users,
            lockout=AuthFailureTracker(self.clock),
            store=self.store,
            delivery=self.runner,
            max_recipients=config.server.max_recipients,
            received_limit=config.server.received_limit,
            received_shows_user=config.server.received_shows_user,
            resolver=self.resolver,
            dnsbl_zones=tuple(dns.dnsbl_zones),
            events=self.log,
            rate_limits=rate_limits(config, rate_tables),
            disk=self.disk,
            clock=self.clock,
            screener=build_screener(config),
            authenticator=build_authenticator(config, self.resolver, self._is_hosted),
            recipients=recipient_validation(config),
            postmaster_domain=postmaster_domain(config, self.policy),
        )
        self.listeners = [self._listener(listener, profile) for listener, profile in zip(config.listener, self.profiles)]
        self.control = ControlServer(
            control_socket_path(config), QueueAdmin(self.store, self.bouncer, self.clock, self._wake_runner)
        )
        self.observe: ObserveServer | None = None
        if config.metrics.address:
            host, port = parse_host_port(config.metrics.address)
            self.observe = ObserveServer(
                host, port + worker_index, self.metrics, self._readiness, sock=listen_sockets.inherited().metrics
            )
        self._gauges_task: asyncio.Task | None = None
        self._probe_task: asyncio.Task | None = None
        self._runner_task: asyncio.Task | None = None
        self._stopped = asyncio.Event()

    def _is_hosted(self, domain: str) -> bool:
        return self.reception.policy.is_hosted(domain)

    def _wake_runner(self) -> None:
        self.runner.wake()

    async def _disk_state_changed(self, old: DiskState, new: DiskState, sample) -> None:
        log.warning("spool disk %s -> %s (%s bytes, %s inodes free)", old.label, new.label,
                    sample.free_bytes, sample.free_inodes)
        if self.log.writer is not None:
            self.log.writer.on_disk_state(new.label)
        for listener in self.listeners:
            if new is DiskState.HARD:
                await listener.pause()
            elif old is DiskState.HARD:
                await listener.resume()

    def _readiness(self) -> list[str]:
        return readiness_problems(self.listeners, self.config.server.spool_dir, self.disk, self.reception.screener)

    def _listener(self, listener, profile: ListenerProfile) -> Listener:
        settings = listener_settings(listener, profile)

        async def handle(reader, writer, owner: Listener, client: str) -> None:
            await Session(self.reception, profile, reader, writer, client).run()

        def refused(client: str, port: int, reason: str, reply) -> None:
            self.log.connection_refused(client, port, listener.name, reason, reply)

        return Listener(settings, handle, on_refused=refused, 
                        sock=listen_sockets.inherited().take_listener(settings.host, settings.port),
                        counts=listen_sockets.inherited().counts.get((settings.host, settings.port)))

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)  # whatever did start is stopped again
            raise

    async def _start(self) -> None:
        if self._start_gate is not None and self.worker_index > 0:
            await self._start_gate.wait()  # worker 0 has run the self-audit: listen now
        for listener in self.listeners:
            listener.bind()  # privileged ports first, then give up root
        self._drop_privileges()
        await self.store.open()
        if self.workers == 1:  # with several workers the supervisor recovered before forking
            await recover_store(self.store)
        Path(self.config.server.spool_dir).mkdir(parents=True, exist_ok=True)
        await self.disk.poll()
        self._disk_task = asyncio.create_task(self.disk.run())
        auditing = self.config.server.self_audit and self.worker_index == 0
        for listener in self.listeners:
            if auditing:
                listener.hold(AUDIT_SOURCES)  # no outside mail before the audit says CLOSED
            await listener.start()
            if self.disk.state is DiskState.HARD:
                await listener.pause()
        if auditing:
            await self._self_audit()
            for listener in self.listeners:
                listener.release()
        if self._start_gate is not None and self.worker_index == 0:
            self._start_gate.open()
        if self.worker_index == 0:
            await self.control.start()
        if self.observe is not None:
            await self.observe.start()
        self._gauges_task = asyncio.create_task(
            update_gauges(self.store, self.metrics, self.config.server.spool_dir, self.clock))
        self._probe_task = asyncio.create_task(probe_periodically(
            lambda: self.reception.screener.probe() if self.reception.screener is not None else None))
        self._runner_task = asyncio.create_task(self.runner.run())
        log.info("mailgate ready: %s", ", ".join(
            f"{l.settings.name}={l.settings.host}:{l.bound_port}" for l in self.listeners))

    async def _self_audit(self) -> None:
        """server.self_audit: the relay-trick table against our own listeners (SPEC R3), from an
        untrusted loopback address, before we say we are ready; an open relay refuses to run."""
        hosted = next((normalise_domain(d.name.strip()) for d in self.config.domain
                       if not d.name.strip().startswith(".")), None)
        targets = [AuditTarget(l.settings.host, l.bound_port, l.settings.implicit_tls is not None)
                   for l in self.listeners if l.listening and l.settings.proxy_from is None]
        # Its connections are logged as one summary per listener, not as refusals (issue 20 item 7).
        self.log.audit_from(AUDIT_SOURCES)
        end_quiet = diagnostics.quiet_clients(AUDIT_SOURCES)
        try:
            accepted = await self_audit(targets, hosted, self._audit_summary)
        finally:
            self.log.audit_from(frozenset())
            end_quiet()
        if accepted:
            raise StartupError("self-audit: an untrusted client (127.0.0.2) could relay:\n" + "\n".join(accepted))

    def _audit_summary(self, summary: AuditSummary) -> None:
        self.log.self_audit(summary.listener, summary.verdict, summary.forms, summary.source, summary.detail)

    def _drop_privileges(self) -> None:
        server = self.config.server
        if not server.user or os.geteuid() != 0:
            return
        try:
            identity = resolve_identity(server.user, server.group)
        except PrivilegeError as exc:
            raise StartupError(f"server.user: {exc}") from None
        problems = spool_ownership_problems(server.spool_dir, identity)
        if problems:
            raise StartupError("\n".join(f"server.spool_dir: {problem}" for problem in problems))
        drop_privileges(identity)
        log.info("running as %s", server.user)

    def reload(self) -> None:
        """SIGHUP: every key applies to new sessions and the next delivery attempts, except those
        the schema marks `restart`: they keep their running value, with a warning for each."""
        try:
            config, waiting = reloadable(self.config, load_file(self.config.source))
            problems = startup_problems(config)
            if problems:
                raise StartupError("\n".join(problems))
            profiles = listener_profiles(config)
            screener = build_screener(config)
            authenticator = build_authenticator(config, self.resolver, self._is_hosted)  # new DKIM keys: rotation without a restart
            recipients = self._reloaded_recipients(config)
        except (ConfigError, StartupError, OSError) as exc:
            log.error("reload refused, keeping the running configuration:\n%s", exc)
            return
        for line in waiting:
            log.warning("reload: %s", line)
        if recipients is not self.reception.recipients and self.reception.recipients is not None:
            self.reception.recipients.close()
        self.reception.recipients = recipients
        previous, self.config = self.config, config
        self.router.update(routing_settings(config))
        dns = config.dns
        self.resolver.configure(list(dns.nameservers) or None, dns.port, dns.timeout)
        reception = self.reception
        reception.policy = RelayPolicy(policy_settings(config), allowed_senders=self.users.allowed_senders)
        reception.postmaster_domain = postmaster_domain(config, reception.policy)
        reception.max_recipients = config.server.max_recipients
        reception.received_limit = config.server.received_limit
        reception.received_shows_user = config.server.received_shows_user
        reception.dnsbl_zones = tuple(dns.dnsbl_zones)
        if config.limits != previous.limits:  # a new local limiter forgets what it counted; shared tables keep it
            reception.rate_limits = rate_limits(config, self._rate_tables)
        reception.screener = screener
        # The old authenticator is not closed: sessions between its check and its signing still
        # use it; its idle threads end when it is collected.
        reception.authenticator = authenticator
        for profile, new, listener in zip(self.profiles, profiles, config.listener):
            if profile.tls_context is not None and new.tls_context is not None:
                # The same context object: implicit-TLS listeners were started with it, so the
                # renewed certificate reaches their new handshakes too (SPEC §5).
                profile.tls_context.load_cert_chain(listener.cert_file, listener.key_file)
                new = dataclasses.replace(new, tls_context=profile.tls_context)
            profile.reload(new)  # listeners keep their sockets; sessions read profiles anew
        log.info("configuration reloaded from %s%s", config.source,
                 f" ({len(waiting)} change(s) wait for a restart)" if waiting else "")

    def _reloaded_recipients(self, config):
        """Unchanged recipient settings keep their sources (and warm caches), which re-read their
        map files and forget cached directory answers; changed ones are built anew."""
        def settings(c):
            return (repr(c.recipient_source), [(d.name, d.recipient_sources, d.local_parts, d.next_hop) for d in c.domain])
        current = self.reception.recipients
        if current is not None and settings(config) == settings(self.config):
            current.reload()
            return current
        return recipient_validation(config)

    def request_stop(self) -> None:
        self._stopped.set()

    async def run_until_stopped(self, grace: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        if self.config.source != EMBEDDED_SOURCE:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self._stopped.wait()
        await self.stop(grace)

    async def stop(self, grace: float = 30.0) -> None:
        for listener in self.listeners:
            await listener.stop_accepting()
        await asyncio.gather(*(listener.drain(grace) for listener in self.listeners))
        await self.runner.stop(grace)
        if self._runner_task is not None:
            self._runner_task.cancel()
        if self.worker_index == 0:
            await self.control.stop()
        if self.observe is not None:
            await self.observe.stop()
        if self._gauges_task is not None:
            self._gauges_task.cancel()
        if self._probe_task is not None:
            self._probe_task.cancel()
        self.disk.stop()
        if self._disk_task is not None:
            self._disk_task.cancel()
        await self.transport.close()
        if self.reception.authenticator is not None:
            self.reception.authenticator.close()
        if self.reception.recipients is not None:
            self.reception.recipients.close()
        await self.store.close()
        self.log.close()
        log.info("mailgate stopped")
