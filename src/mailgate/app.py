"""The composition root: configuration in, running listeners, runner and control socket out.

Owns: choosing the concrete implementations (SQLite store, dnspython resolver, SMTP transport,
file user store) and wiring them together, signal handling (SIGHUP reload keeping the old
configuration on error, SIGTERM/SIGINT drain) and the order of start and stop.
Must not: contain protocol, policy or delivery logic of its own, translate configuration
(app_config.py), check it (preflight.py) or observe (observe/observation.py: logs, gauges,
readiness endpoint).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from mailgate.app_config import (
    audit_domain, console_settings, delivery_transport, disk_guard, listener_profiles, listener_settings,
    observation_settings, rate_limits, reception_settings, recipient_validation, reload_profiles, reloaded_recipients,
    resolver_settings, routing_settings, runner_settings,
)
from mailgate.auth.lockout import AuthFailureTracker
from mailgate.auth.store import FileUserStore
from mailgate.config.loader import EMBEDDED_SOURCE, Config, ConfigError, load_file
from mailgate.config.reload import reloadable
from mailgate.core.clock import Clock, SystemClock
from mailgate.delivery.admin import QueueAdmin
from mailgate.delivery.routing import Router
from mailgate.delivery.runner import DeliveryRunner
from mailgate.dns.resolver import DnsPythonResolver
from mailgate.observe.observation import Observation
from mailgate.observe.readiness import readiness_problems
from mailgate.offline_queue import open_store, recover_store
from mailgate.preflight import server_user_problems, startup_problems, startup_warnings
from mailgate.policy.shared_limits import RateTables
from mailgate.queue_config import bouncer, control_socket_path, queue_store, retry_schedule
from mailgate.server import listen_sockets
from mailgate.server.context import ListenerProfile, Reception
from mailgate.server.control import ControlServer
from mailgate.server.diskguard import DiskState
from mailgate.server.listener import Listener
from mailgate.server.privileges import drop_privileges, resolve_identity
from mailgate.server.session import Session
from mailgate.screen.health import probe_periodically
from mailgate.start_gate import StartGate
from mailgate.startup_errors import StartupError
from mailgate.tools.audit import AUDIT_SOURCES, AuditTarget, self_audit

log = logging.getLogger("mailgate")


class Application:
    def __init__(
        self, config: Config, *, clock: Clock | None = None, worker_index: int = 0, workers: int = 1,
        start_gate: StartGate | None = None, rate_tables: RateTables | None = None,
    ) -> None:
        problems = startup_problems(config)
        if problems:
            raise StartupError("\n".join(problems))
        self.config, self.clock = config, clock or SystemClock()
        self.worker_index, self.workers, self._start_gate = worker_index, workers, start_gate
        self._warn(config)
        self._rate_tables = rate_tables  # with several workers: the shared memory they all count in
        self.profiles = listener_profiles(config)
        self.observation = Observation(observation_settings(config, worker_index), self.clock, self._readiness,
                                       listen_sockets.inherited().metrics)
        self.metrics, self.log, deliveries = self.observation.metrics, self.observation.log, self.observation.deliveries
        self.store = queue_store(config, self.clock)
        self.resolver = DnsPythonResolver(*resolver_settings(config))
        self.router = Router(routing_settings(config), self.resolver)
        self.transport = delivery_transport(config)
        schedule = retry_schedule(config)  # the one carrier of delivery.max_lifetime
        self.bouncer = bouncer(config, self.store, schedule, on_queued=self._wake_runner, on_dsn=deliveries.dsn)
        self.runner = DeliveryRunner(self.store, self.router, self.transport, self.bouncer, schedule,
                                     self.clock, runner_settings(config), on_attempt=deliveries.attempt)
        watch = getattr(self.store, "watch", None)
        if watch is not None:  # the cluster store: mail other nodes accepted or left is due here too
            watch(self._wake_runner)
        self.disk = disk_guard(config)
        self.disk.subscribe(self._disk_state_changed)
        self.users = FileUserStore(config.server.users_file)
        self.reception = Reception(
            hostname=config.server.hostname, users=self.users, lockout=AuthFailureTracker(self.clock),
            store=self.store, delivery=self.runner, resolver=self.resolver, events=self.log, disk=self.disk,
            clock=self.clock, rate_limits=rate_limits(config, rate_tables), recipients=recipient_validation(config),
            **reception_settings(config, self.users, self.resolver, self._is_hosted),
        )
        self.listeners = [self._listener(listener, profile) for listener, profile in zip(config.listener, self.profiles)]
        self.control = ControlServer(
            control_socket_path(config), QueueAdmin(self.store, self.bouncer, self.clock, self._wake_runner)
        )
        self.console = self._console() if config.console.enabled and worker_index == 0 else None
        self._disk_task: asyncio.Task | None = None
        self._runner_task: asyncio.Task | None = None
        self._stopped = asyncio.Event()

    def _console(self):
        """The web console, in worker 0 only (console/server.py says why); imported here so a
        server without it never loads the web stack."""
        from mailgate.console.context import ConsoleServices
        from mailgate.console.server import ConsoleServer

        services = ConsoleServices(
            config=lambda: self.config, store=self.store, admin=self.control.admin, users=self.users,
            log=self.log, clock=self.clock, disk=self.disk,
        )
        return ConsoleServer(console_settings(self.config), services, sock=listen_sockets.inherited().console)

    def _is_hosted(self, domain: str) -> bool:
        return self.reception.policy.is_hosted(domain)

    def _wake_runner(self) -> None:
        self.runner.wake()

    async def _disk_state_changed(self, old: DiskState, new: DiskState, sample) -> None:
        self.observation.disk_state_changed(old, new, sample)
        for listener in self.listeners:
            if new is DiskState.HARD:
                await listener.pause()
            elif old is DiskState.HARD:
                await listener.resume()

    async def _probe_screener(self) -> None:
        await probe_periodically(lambda: self.reception.screener.probe() if self.reception.screener is not None else None)

    def _readiness(self) -> list[str]:
        return readiness_problems(self.listeners, self.config.server.spool_dir, self.disk, self.reception.screener)

    def _listener(self, listener, profile: ListenerProfile) -> Listener:
        settings = listener_settings(listener, profile)

        async def handle(reader, writer, owner: Listener, client: str) -> None:
            await Session(self.reception, profile, reader, writer, client, owner.drain_signal).run()

        def refused(client: str, port: int, reason: str, reply) -> None:
            self.log.connection_refused(client, port, listener.name, reason, reply)

        sockets = listen_sockets.inherited()
        return Listener(settings, handle, on_refused=refused, sock=sockets.take_listener(settings.host, settings.port),
                        counts=sockets.counts.get((settings.host, settings.port)))

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
        await open_store(self.store)
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
        if self.console is not None:
            await self.console.start()
        await self.observation.start(self.store, self.config.server.spool_dir, self._probe_screener)
        self._runner_task = asyncio.create_task(self.runner.run())
        log.info("mailgate ready: %s", ", ".join(
            f"{l.settings.name}={l.settings.host}:{l.bound_port}" for l in self.listeners))

    async def _self_audit(self) -> None:
        """server.self_audit: the relay-trick table against our own listeners (SPEC R3), from an
        untrusted loopback address, before we say we are ready; an open relay refuses to run."""
        targets = [AuditTarget(l.settings.host, l.bound_port, l.settings.implicit_tls is not None)
                   for l in self.listeners if l.listening and l.settings.proxy_from is None]
        with self.observation.auditing(AUDIT_SOURCES):  # one summary per listener (issue 20 item 7)
            accepted = await self_audit(targets, audit_domain(self.config), self.observation.audit_summary)
        if accepted:
            raise StartupError("self-audit: an untrusted client (127.0.0.2) could relay:\n" + "\n".join(accepted))

    def _drop_privileges(self) -> None:
        server = self.config.server
        if not server.user or os.geteuid() != 0:
            return
        problems = server_user_problems(self.config)  # again: the spool may have changed since
        if problems:
            raise StartupError("\n".join(problems))
        drop_privileges(resolve_identity(server.user, server.group))
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
            reception = reception_settings(config, self.users, self.resolver, self._is_hosted)
            reception["recipients"] = reloaded_recipients(config, self.config, self.reception.recipients)
        except (ConfigError, StartupError, OSError) as exc:
            log.error("reload refused, keeping the running configuration:\n%s", exc)
            return
        for line in waiting:
            log.warning("reload: %s", line)
        self._warn(config)
        if self.console is not None:
            self.console.reload(console_settings(config))
        if reception["recipients"] is not self.reception.recipients and self.reception.recipients is not None:
            self.reception.recipients.close()
        if config.limits != self.config.limits:  # a new local limiter forgets what it counted; shared tables keep it
            reception["rate_limits"] = rate_limits(config, self._rate_tables)
        # The old authenticator is not closed: sessions between its check and its signing still
        # use it; its idle threads end when it is collected.
        self.reception.reload(reception)
        self.config = config
        self.router.update(routing_settings(config))
        self.resolver.configure(*resolver_settings(config))
        reload_profiles(self.profiles, profiles, config)
        log.info("configuration reloaded from %s%s", config.source,
                 f" ({len(waiting)} change(s) wait for a restart)" if waiting else "")

    def _warn(self, config: Config) -> None:
        if self.worker_index == 0:  # once for the whole server
            for line in startup_warnings(config):
                log.warning("%s", line)

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
        if self.console is not None:
            await self.console.stop()
        if self.worker_index == 0:
            await self.control.stop()
        await self.observation.stop()
        self.disk.stop()
        if self._disk_task is not None:
            self._disk_task.cancel()
        await self.transport.close()
        if self.reception.authenticator is not None:
            self.reception.authenticator.close()
        if self.reception.recipients is not None:
            self.reception.recipients.close()
        await self.store.close()
        self.observation.close()
        log.info("mailgate stopped")
