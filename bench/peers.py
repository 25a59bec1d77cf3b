"""The servers under test and the counting sink they relay to.

Owns: starting and stopping, on loopback, (1) mailgate as a subprocess with the one benchmark
configuration below, (2) a private Postfix relaying the same hosted domain (tests/support/postfix,
Postfix defaults otherwise: fsync on), (3) smtp-sink as the shared next hop, whose running
counters (`-c`) tell us when all N messages have arrived.
`mailgate-pg` and `mailgate-pg-2nodes` are one and two mailgate nodes on a private PostgreSQL
queue (docs/cluster.md).
Must NOT: measure anything (procstat and clients do) or touch a system-wide mail server.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.clients import SENDER
from tests.support import postfix

HOSTED_DOMAIN = "hosted.test"
SENDER_DOMAIN = SENDER.rpartition("@")[2]  # the From: domain of the load (smtp-source -f)
SMTP_SINK = "/usr/sbin/smtp-sink"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0

# The one place that says how mailgate is configured for the benchmark: its defaults
# (durable queue) plus one MX listener and the hosted domain whose next hop is the sink.
# (Keys as in docs/configuration.md, generated from src/mailgate/config/schema.py.)
MAILGATE_CONFIG_TEMPLATE = """\
[server]
hostname = "bench.test"
spool_dir = "{spool_dir}"

[[listener]]
name = "mx"
address = "127.0.0.1:{listen_port}"
profile = "mx"
tls = "none"
# All load comes from loopback (127.0.0.1, and 127.0.0.2-51 for the idle connections). Postfix's
# defaults exempt mynetworks (which holds loopback) from its per-client limits; these give mailgate
# the same room, so C=100 and the 10,000 idle connections (plus the fresh clients probing while
# they are held) measure the server rather than a connection limit.
max_connections = 20000
max_connections_per_client = 20000

[relay]
trusted_networks = {trusted_networks}

[[domain]]
name = "{hosted_domain}"
next_hop = ["127.0.0.1:{sink_port}"]
tls = "none"

# Postfix checks no SPF, DKIM or DMARC here; neither does mailgate (bench/auth_bench.py measures them).
[authentication]
inbound_checks = false

# The logs a production relay has on (Postfix writes its maillog in the same run): the JSON
# transaction log and the W3C log, besides the diagnostic log on stdout.
[log]
json_file = "{log_dir}/transactions.jsonl"
w3c_dir = "{log_dir}/w3c"
"""

# `--dkim`: the load comes from a trusted network and every message is signed for its From:
# domain with an RSA and an Ed25519 key (dual signing, docs/operations.md).
SIGNING = {"enabled": False}


def signing_config(workdir: Path, domain: str) -> str:
    """[[dkim_key]] entries with fresh keys for `domain`, written under `workdir` (mode 0600)."""
    from mailgate.auth.dkim_keys import generate_private_key, write_private_key

    text = ""
    for kind in ("rsa", "ed25519"):
        path = workdir / f"dkim-{kind}.key"
        if not path.exists():
            write_private_key(path, generate_private_key(kind))
        text += f'\n[[dkim_key]]\ndomain = "{domain}"\nselector = "bench-{kind}"\nkey_file = "{path}"\n'
    return text


# `--recipients`: the hosted domain validates recipients at RCPT (docs/operations.md). `file`: a
# map of a million addresses; `ldap`: a private slapd, answers cached (warm after the first);
# `ldap-cold`: the same with no positive cache, so every RCPT searches the directory.
RECIPIENTS = {"mode": "none"}
MAP_ENTRIES = 1_000_000


def recipients_config(workdir: Path, mode: str) -> tuple[str, Callable[[], None]]:
    """The [[recipient_source]] text for `mode` and how to stop what it started."""
    from bench.clients import RECIPIENT

    if mode == "file":
        path = workdir / "recipients"
        if not path.exists():
            with path.open("w") as handle:
                handle.write(f"{RECIPIENT}\n")
                handle.writelines(f"user{index}@{HOSTED_DOMAIN}\n" for index in range(MAP_ENTRIES - 1))
        return f'\n[[recipient_source]]\nname = "users"\ntype = "file"\npath = "{path}"\n', lambda: None
    from tests.support import slapd

    local = RECIPIENT.partition("@")[0]
    directory = slapd.start_slapd("/usr/sbin/slapd", [slapd.person(local, RECIPIENT)])
    password = workdir / "ldap-password"
    password.write_text(slapd.ADMIN_PASSWORD)
    text = (
        f'\n[[recipient_source]]\nname = "users"\ntype = "ldap"\nservers = ["{directory.uri}"]\n'
        f'bind_dn = "{slapd.ADMIN_DN}"\nbind_password_file = "{password}"\nsearch_base = "{slapd.BASE_DN}"\n'
        + ('positive_ttl = "0s"\n' if mode == "ldap-cold" else "")
    )
    return text, directory.cleanup


class PeerError(RuntimeError):
    """A server under test or the sink could not be started."""


@dataclass
class ServerHandle:
    """A running server under test: the roots of its process tree, and how to stop it."""

    name: str
    pids: list[int]
    stop: Callable[[], None]
    more_ports: tuple[int, ...] = ()  # further nodes of the same cluster: the load is split


def start_mailgate(
    workdir: Path, listen_port: int, sink_port: int, python: str = sys.executable,
    spool_dir: Path | None = None, extra_config: str = "",
) -> ServerHandle:
    """`<python> -m mailgate serve --config <workdir>/mailgate.toml`, ready once it greets.
    `spool_dir`: an existing spool to use (default: a new one, `<workdir>/spool`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "mailgate.toml"
    signing = SIGNING["enabled"]
    validation, stop_validation = ("", lambda: None)
    if RECIPIENTS["mode"] != "none":
        validation, stop_validation = recipients_config(workdir, RECIPIENTS["mode"])
    config.write_text(
        MAILGATE_CONFIG_TEMPLATE.format(
            spool_dir=spool_dir or workdir / "spool",
            log_dir=workdir / "logs",
            listen_port=listen_port,
            sink_port=sink_port,
            hosted_domain=HOSTED_DOMAIN,
            trusted_networks='["127.0.0.1/32"]' if signing else "[]",
        )
        + (signing_config(workdir, SENDER_DOMAIN) if signing else "")
        + validation
        + extra_config
    )
    if validation:
        text = config.read_text().replace(
            f'name = "{HOSTED_DOMAIN}"\n', f'name = "{HOSTED_DOMAIN}"\nrecipient_sources = ["users"]\n', 1)
        config.write_text(text)
    log_path = workdir / "mailgate.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [python, "-m", "mailgate", "serve", "--config", str(config)],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop() -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        stop_validation()

    try:
        wait_for_banner(listen_port, START_TIMEOUT_S, alive=lambda: process.poll() is None)
    except PeerError as error:
        stop()
        tail = log_path.read_text(errors="replace")[-3000:]
        raise PeerError(f"mailgate did not start: {error}\n--- {log_path} ---\n{tail}") from error
    return ServerHandle("mailgate", [process.pid], stop)


def start_postfix(workdir: Path, listen_port: int, sink_port: int, settings: dict[str, str] | None = None) -> ServerHandle:
    """A private Postfix relaying the hosted domain to the sink, Postfix defaults otherwise (plus
    `settings` for main.cf)."""
    root = workdir / "postfix"
    if root.exists():
        shutil.rmtree(root)
    instance = postfix.start_relay(
        listen_port, HOSTED_DOMAIN, ("127.0.0.1", sink_port), root=root, settings=settings
    )
    master = instance.master_pid()
    if master is None:
        instance.stop()
        raise PeerError("postfix started but its master PID file is missing")
    return ServerHandle("postfix", [master], instance.stop)


def start_postfix_opendkim(workdir: Path, listen_port: int, sink_port: int) -> ServerHandle:
    """Postfix signing through an OpenDKIM milter with an RSA and an Ed25519 key (bench/opendkim_milter.py):
    the same signing job as mailgate's `--dkim` runs, done the way a Postfix site does it. (A short
    name: it is part of the work directory, and Postfix's queue sockets must fit in sun_path.)"""
    from bench import opendkim_milter
    from mailgate.auth.dkim_keys import generate_private_key, write_private_key

    stops: list[Callable[[], None]] = []
    pids, sockets = [], []

    def stop_milters() -> None:
        for stop_milter in stops:
            stop_milter()

    try:
        for kind, algorithm in (("rsa", "rsa-sha256"), ("ed25519", "ed25519-sha256")):
            milter_dir = workdir / f"opendkim-{kind}"
            key = milter_dir / f"dkim-{kind}.key"
            if not key.exists():
                write_private_key(key, generate_private_key(kind))
            milter_socket, pid, stop_milter = opendkim_milter.start(milter_dir, SENDER_DOMAIN, f"bench-{kind}", key, algorithm)
            sockets.append(milter_socket)
            pids.append(pid)
            stops.append(stop_milter)
        relay = start_postfix(workdir, listen_port, sink_port, opendkim_milter.postfix_settings(sockets))
    except opendkim_milter.MilterError as error:
        stop_milters()
        raise PeerError(str(error)) from error
    except BaseException:
        stop_milters()
        raise

    def stop() -> None:
        relay.stop()
        stop_milters()

    return ServerHandle("postfix-dkim", [*relay.pids, *pids], stop)


def _cluster_config(pg, dsn: str, workdir: Path, node: str) -> str:  # type: ignore[no-untyped-def]
    secret = pg.write_password_file(workdir / "db.password")
    return (f'\n[queue]\nbackend = "postgresql"\ndsn = "{dsn}"\npassword_file = "{secret}"\n'
            f'node_name = "{node}"\n')


def start_mailgate_cluster(workdir: Path, listen_port: int, sink_port: int, nodes: int = 1) -> ServerHandle:
    """`nodes` mailgate processes sharing a private PostgreSQL (fsync on, synchronous_commit on:
    the database's defaults) as their queue; node 1 listens on `listen_port`, the others on the
    ports in `more_ports`. The PostgreSQL processes count in the CPU and memory measured."""
    from tests.support.postgres import start_postgres

    workdir.mkdir(parents=True, exist_ok=True)
    pg = start_postgres(fsync=True)
    handles: list[ServerHandle] = []
    try:
        dsn = pg.new_database()
        ports = [listen_port] + [_free_port() for _ in range(nodes - 1)]
        for index, port in enumerate(ports):
            node_dir = workdir / f"node{index + 1}"
            node_dir.mkdir(exist_ok=True)
            handles.append(start_mailgate(node_dir, port, sink_port,
                                          extra_config=_cluster_config(pg, dsn, node_dir, f"node{index + 1}")))
    except BaseException:
        for handle in handles:
            handle.stop()
        pg.cleanup()
        raise

    def stop() -> None:
        for handle in handles:
            handle.stop()
        pg.cleanup()

    assert pg.process is not None
    pids = [pid for handle in handles for pid in handle.pids] + [pg.process.pid]
    name = "mailgate-pg" if nodes == 1 else f"mailgate-pg-{nodes}nodes"
    return ServerHandle(name, pids, stop, tuple(ports[1:]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SERVERS: dict[str, Callable[[Path, int, int], ServerHandle]] = {
    "mailgate": start_mailgate,
    "mailgate-pg": start_mailgate_cluster,
    "mailgate-pg-2nodes": lambda workdir, port, sink: start_mailgate_cluster(workdir, port, sink, nodes=2),
    "postfix": start_postfix,
    "postfix-dkim": start_postfix_opendkim,
}


class CountingSink:
    """smtp-sink on 127.0.0.1:port; a thread follows its `-c` counters ("... mesg=N\\r")."""

    _MESSAGES = re.compile(rb"mesg=(\d+)\r")  # only complete counter lines

    def __init__(self, port: int) -> None:
        command = [SMTP_SINK, "-c"]
        if os.geteuid() == 0:
            command += ["-u", "postfix"]  # smtp-sink(1): required when run as root
        command += [f"127.0.0.1:{port}", "1024"]
        self.port = port
        self.count = 0
        self._target = 0
        self._reached_at: float | None = None
        self._reached = threading.Event()
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self._reader = threading.Thread(target=self._follow, name="sink-counter", daemon=True)
        self._reader.start()
        try:
            wait_for_banner(port, START_TIMEOUT_S, alive=lambda: self._process.poll() is None)
        except PeerError:
            self.stop()
            raise

    def expect(self, total: int) -> None:
        """Arm wait_for_total(): the sink's message count that means "all arrived"."""
        self._target = total
        self._reached_at = None
        self._reached.clear()
        self._check_target()

    def wait_for_total(self, timeout: float) -> float | None:
        """Monotonic time at which the expected count was reached, None if not within timeout."""
        self._reached.wait(timeout)
        return self._reached_at

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(STOP_TIMEOUT_S)
        self._reader.join(STOP_TIMEOUT_S)

    def _follow(self) -> None:
        assert self._process.stdout is not None
        tail = b""
        while chunk := os.read(self._process.stdout.fileno(), 65536):
            tail = (tail + chunk)[-256:]
            counts = self._MESSAGES.findall(tail)
            if counts:
                self.count = max(self.count, int(counts[-1]))
                self._check_target()

    def _check_target(self) -> None:
        if self._target and self.count >= self._target and not self._reached.is_set():
            self._reached_at = time.monotonic()
            self._reached.set()


def wait_for_banner(port: int, timeout: float, alive: Callable[[], bool]) -> None:
    """Bounded wait until 127.0.0.1:port sends a 220 greeting (RFC 5321 §4.3.2)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise PeerError("the process exited before greeting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError as error:
            last_error = error
        time.sleep(0.05)
    raise PeerError(f"no 220 greeting on 127.0.0.1:{port} within {timeout:g}s: {last_error}")
