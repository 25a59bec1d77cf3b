"""The start-up checks that need no socket: what `serve` refuses to start with.

Owns: `startup_problems`, the list of every reason a validated configuration cannot run here:
certificates that do not load, an open-relay configuration (SPEC R3), screening settings the
screener refuses, DKIM keys that cannot sign, a users file, smart-host or queue password file that
cannot be read, a cluster queue without a DSN, a `server.user` that does not exist or cannot use
the spool, an outbound source address (`bind_address`) that is not one of this host's. `serve`, a SIGHUP reload and `config check` (the
systemd unit's ExecStartPre) all run it, so the check never says OK to what `serve` refuses.
Must not: listen, connect or write anything (a source address is only bound to a free port and
let go); checks that need a listening socket stay in app.py. Also `startup_warnings`: what it starts
with but warns about (worker 0 logs them at start and reload, `config check` prints them).
"""

from __future__ import annotations

import getpass
import os
import socket

from mailgate.app_config import (
    arc_seal_key, build_screener, build_signer, console_settings, listener_profiles, organizational_domains, policy_settings,
    routing_settings,
)
from mailgate.auth.store import FileUserStore, UserStoreError
from mailgate.config.loader import Config
from mailgate.policy.audit import open_relay_problems
from mailgate.queue_config import queue_problems
from mailgate.server.privileges import PrivilegeError, resolve_identity, spool_ownership_problems
from mailgate.startup_errors import StartupError


def startup_problems(config: Config) -> list[str]:
    """Every problem, one line each naming the configuration key; empty when `serve` may start."""
    problems: list[str] = []
    for check in (_certificates, _open_relay, _screening, _message_authentication, _users_file, _smart_host_password,
                  server_user_problems, _bind_addresses, _console, queue_problems):
        problems.extend(check(config))
    return problems


def startup_warnings(config: Config) -> list[str]:
    """What `serve` starts with but an admin should hear about, one line each naming the key: a
    hosted domain with an SMTP next hop and nothing that knows its users accepts every local part,
    and the internal server's refusals then become bounces to (often forged) senders: backscatter.
    A maildir next hop takes every local part itself, so it bounces nothing."""
    return [
        f"domain[{index}] {domain.name}: no recipient_sources or local_parts, so every recipient is "
        f"accepted and those the next hop refuses are bounced after the 250 (backscatter); "
        f'see docs/operations.md "Recipient validation"'
        for index, domain in enumerate(config.domain)
        if not domain.recipient_sources and not domain.local_parts
        and any(not hop.startswith("maildir:") for hop in domain.next_hop)
    ]


def _errors_of(build) -> list[str]:
    try:
        build()
    except StartupError as exc:
        return str(exc).splitlines()
    return []


def _certificates(config: Config) -> list[str]:
    return _errors_of(lambda: listener_profiles(config))


def _console(config: Config) -> list[str]:
    """The console's certificate and key, when it serves HTTPS."""
    return _errors_of(lambda: console_settings(config)) if config.console.enabled else []


def _screening(config: Config) -> list[str]:
    return _errors_of(lambda: build_screener(config))


def _message_authentication(config: Config) -> list[str]:
    """DKIM and ARC key files (mode, format, one active key per type) and the Public Suffix List."""
    return (_errors_of(lambda: build_signer(config)) + _errors_of(lambda: organizational_domains(config))
            + _errors_of(lambda: arc_seal_key(config)))


def _open_relay(config: Config) -> list[str]:
    return open_relay_problems(policy_settings(config), config.relay.acknowledge_open_relay)


def _users_file(config: Config) -> list[str]:
    path = config.server.users_file
    try:
        FileUserStore(path)
    except OSError as exc:
        return [f"server.users_file: {path}: {exc.strerror} for user {_whoami()}; "
                + users_file_fix(path, config.server.user or "mailgate")]
    except UserStoreError as exc:
        return [f"server.users_file: {exc}"]
    return []


def users_file_fix(path: str, service_user: str) -> str:
    """How to make the users file readable by the service user (as docs/operations.md says)."""
    return f"the service user must read it: chgrp {service_user} {path} && chmod 0640 {path}"


def _smart_host_password(config: Config) -> list[str]:
    delivery = config.delivery
    if not (delivery.smart_host and delivery.smart_host_user):
        return []
    try:
        routing_settings(config)
    except OSError as exc:
        return [f"delivery.smart_host_password_file: {delivery.smart_host_password_file}: "
                f"{exc.strerror} for user {_whoami()}"]
    return []


def server_user_problems(config: Config) -> list[str]:
    """server.user and server.group exist and, as root, the spool is usable by them (app.py asks
    again right before it drops privileges)."""
    server = config.server
    if not server.user:
        return []
    try:
        identity = resolve_identity(server.user, server.group)
    except PrivilegeError as exc:
        return [str(exc)]
    if os.geteuid() != 0:
        return []  # only root can switch users; serve says so when it tries
    return spool_ownership_problems(server.spool_dir, identity)


def _bind_addresses(config: Config) -> list[str]:
    """Each outbound source address must be one of this host's (bound to a free port and let go)."""
    configured = [("delivery", config.delivery)] + [(f"domain[{i}]", d) for i, d in enumerate(config.domain)]
    problems = []
    for path, table in configured:
        for key, family in (("bind_address", socket.AF_INET), ("bind_address6", socket.AF_INET6)):
            address = getattr(table, key)
            if not address:
                continue
            try:
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.bind((address, 0))
            except OSError as exc:
                problems.append(f"{path}.{key}: {address} is not an address of this host ({exc.strerror})")
    return problems


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.geteuid()}"
