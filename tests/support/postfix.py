"""A private Postfix instance as a real peer for e2e tests and the benchmark.

Owns: writing a self-contained Postfix configuration (main.cf, master.cf, maps) and its queue,
data, mailbox and log directories under one root directory; starting it on one loopback port;
waiting for its banner; stopping it; reading what it logged and delivered.  Three shapes:
  * `start_relay`      relays one hosted domain to a fixed next hop (transport_maps);
  * `start_open_relay` a deliberately OPEN relay (mynetworks = 0.0.0.0/0: every client trusted);
  * `start_receiver`   delivers its domains into maildirs we can count (the `virtual` agent).

Must NOT: touch the system instance (/etc/postfix is only read, as the master.cf template and
Postfix's meta_directory), listen anywhere but 127.0.0.1, or send mail off the machine: every
shape routes mail only to loopback next hops, a discard, or an error transport.

Hand-written because no library drives a throw-away Postfix; it needs root (Postfix's master
runs as root and its daemons switch to `mail_owner`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
SYSTEM_MASTER_CF = Path("/etc/postfix/master.cf")
MAIL_OWNER = "postfix"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
# Queue subdirectories that hold messages not yet delivered (Postfix QSHAPE_README).
PENDING_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


class PostfixError(RuntimeError):
    """The private instance could not be configured, started or stopped."""


@dataclass
class PostfixInstance:
    """One running private Postfix; stop it (or use `with`) to remove every trace."""

    root: Path
    port: int
    mailbox_dir: Path | None
    keep_root: bool = False

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def maillog_path(self) -> Path:
        return self.root / "log" / "maillog"

    def master_pid(self) -> int | None:
        """PID of the running master process, or None once it is gone."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_alive(pid) else None

    def maillog(self) -> str:
        try:
            return self.maillog_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, count: int = 1, timeout: float = 30.0) -> str:
        """Poll (bounded) until `text` occurs `count` times in the maillog; returns the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.maillog()
            if log.count(text) >= count or time.monotonic() >= deadline:
                return log
            time.sleep(0.05)

    def pending_count(self) -> int:
        """Messages still in the queue (received but not yet delivered or bounced)."""
        return sum(
            sum(len(files) for _, _, files in os.walk(self.queue_dir / name))
            for name in PENDING_QUEUES
        )

    def delivered(self) -> list[Path]:
        """Message files delivered into the maildirs (receiver shape only), oldest first."""
        if self.mailbox_dir is None:
            raise PostfixError("this instance does not deliver locally (use start_receiver)")
        found = [path for path in self.mailbox_dir.glob("*/new/*") if path.is_file()]
        return sorted(found, key=lambda path: path.stat().st_mtime_ns)

    def wait_delivered(self, count: int, timeout: float = 30.0) -> list[Path]:
        """Poll (bounded) until at least `count` messages sit in the maildirs."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.delivered()
            if len(messages) >= count or time.monotonic() >= deadline:
                return messages
            time.sleep(0.05)

    def stop(self) -> None:
        """`postfix stop`, wait for the master to exit (killed by PID if it must), clean up."""
        pid = self.master_pid()
        if pid is not None:
            _postfix(self.config_dir, "stop", check=False)
            if not _wait_gone(pid, STOP_TIMEOUT_S):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, STOP_TIMEOUT_S)
        if not self.keep_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostfixInstance:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def tls_settings(cert_file: str, key_file: str) -> dict[str, str]:
    """main.cf settings offering STARTTLS (RFC 3207) with the given certificate and key."""
    return {
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": cert_file,
        "smtpd_tls_key_file": key_file,
    }


def start_relay(
    port: int,
    hosted_domain: str,
    next_hop: tuple[str, int],
    *,
    trusted_networks: str | None = None,
    root: Path | None = None,
    settings: Mapping[str, str] | None = None,
) -> PostfixInstance:
    """Relay `hosted_domain` to `next_hop` (host, port) through transport_maps.

    `trusted_networks` becomes mynetworks; None keeps Postfix's default (the host's own
    networks, so loopback clients may relay), "" trusts nobody: other domains then get Postfix's
    default `454 4.7.1 Relay access denied`.  Mail for other domains that a trusted client sends
    goes to the error transport, never to the internet.
    """
    host, hop_port = next_hop
    main = {
        "relay_domains": hosted_domain,
        "transport_maps": "texthash:${config_directory}/transport",
    }
    if trusted_networks is not None:
        main["mynetworks"] = trusted_networks
    maps = {"transport": f"{hosted_domain} smtp:[{host}]:{hop_port}\n"}
    return _start(port, {**main, **(settings or {})}, maps, root, with_mailboxes=False)


def start_open_relay(
    port: int,
    *,
    next_hop: tuple[str, int] | None = None,
    root: Path | None = None,
    settings: Mapping[str, str] | None = None,
) -> PostfixInstance:
    """A deliberately OPEN relay: every IPv4 client is trusted, so it relays to any domain.

    (Postfix refuses to start with bare `permit` relay restrictions, so trust does the opening.)
    Accepted mail goes to `next_hop` when given, else it is discarded (never off the machine).
    """
    main = {"mynetworks": "0.0.0.0/0"}
    if next_hop is None:
        main["default_transport"] = "discard:open relay harness"
    else:
        main["default_transport"] = f"smtp:[{next_hop[0]}]:{next_hop[1]}"
    return _start(port, {**main, **(settings or {})}, {}, root, with_mailboxes=False)


def start_receiver(
    port: int,
    domains: Sequence[str],
    *,
    root: Path | None = None,
    settings: Mapping[str, str] | None = None,
    mailboxes: Sequence[str] = (),
) -> PostfixInstance:
    """A final MTA for `domains`: every address of domain D lands in maildir `<root>/mail/D/`.

    It trusts no client, so any other domain is refused at RCPT (454 4.7.1, Postfix's default).
    With `mailboxes`, only those addresses exist; others get 550 5.1.1 at RCPT, as an
    internal server with a user directory answers.
    """
    owner = pwd.getpwnam(MAIL_OWNER)
    main = {
        "mynetworks": "",
        "virtual_mailbox_domains": " ".join(domains),
        "virtual_mailbox_base": "${mailbox_root}",
        "virtual_mailbox_maps": "texthash:${config_directory}/vmailbox",
        "virtual_uid_maps": f"static:{owner.pw_uid}",
        "virtual_gid_maps": f"static:{owner.pw_gid}",
        "virtual_minimum_uid": str(owner.pw_uid),
    }
    # "@domain" is the virtual(8) catch-all; a result ending in "/" asks for a maildir.
    maps = {"vmailbox": "".join(f"{address} {address.partition('@')[2]}/\n" for address in mailboxes)
            or "".join(f"@{domain} {domain}/\n" for domain in domains)}
    return _start(port, {**main, **(settings or {})}, maps, root, with_mailboxes=True)


def _start(
    port: int,
    settings: Mapping[str, str],
    maps: Mapping[str, str],
    root: Path | None,
    *,
    with_mailboxes: bool,
) -> PostfixInstance:
    if os.geteuid() != 0:
        raise PostfixError("a private Postfix instance needs root (its master runs as root)")
    keep_root = root is not None
    root = Path(tempfile.mkdtemp(prefix="mailgate-postfix-")) if root is None else root
    # Daemons run as mail_owner and reach the maildirs and log by absolute path.
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    instance = PostfixInstance(
        root, port, root / "mail" if with_mailboxes else None, keep_root=keep_root
    )
    try:
        _write_layout(instance, settings, maps)
        _postfix(instance.config_dir, "check")
        _postfix(instance.config_dir, "start")
        _wait_for_banner(port, START_TIMEOUT_S)
    except PostfixError as error:
        log_tail = instance.maillog()[-2000:]
        instance.stop()
        raise PostfixError(f"{error}\n--- maillog tail ---\n{log_tail}") from error
    except BaseException:
        instance.stop()
        raise
    return instance


def _write_layout(
    instance: PostfixInstance, settings: Mapping[str, str], maps: Mapping[str, str]
) -> None:
    owner = pwd.getpwnam(MAIL_OWNER)
    config_dir = instance.config_dir
    config_dir.mkdir()
    instance.queue_dir.mkdir()
    for owned in ("data", "log", "mail"):
        path = instance.root / owned
        path.mkdir()
        os.chown(path, owner.pw_uid, owner.pw_gid)
    main = {
        "compatibility_level": "3.6",
        "queue_directory": str(instance.queue_dir),
        "data_directory": str(instance.root / "data"),
        "mail_owner": MAIL_OWNER,
        "inet_interfaces": LOOPBACK,
        "inet_protocols": "ipv4",
        "myhostname": f"postfix-{instance.port}.test",
        "mydestination": "",
        "alias_maps": "",
        "alias_database": "",
        "maillog_file": str(instance.maillog_path),
        "maillog_file_prefixes": str(instance.root),
        # Safety net: nothing is ever routed by DNS to the internet from a test instance.
        "default_transport": "error:5.7.1 not routed by this private test instance",
        **settings,
    }
    if instance.mailbox_dir is not None:
        main["mailbox_root"] = str(instance.mailbox_dir)  # user-defined, used by receivers
    lines = [f"{key} = {value}\n" for key, value in main.items()]
    (config_dir / "main.cf").write_text("".join(lines))
    for name, text in maps.items():
        (config_dir / name).write_text(text)
    (config_dir / "master.cf").write_text(_master_cf(instance.port))


def _master_cf(port: int) -> str:
    """The system master.cf with the smtp listener moved to our port and chroot turned off."""
    lines = []
    for line in SYSTEM_MASTER_CF.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 8 and not line.startswith(("#", " ", "\t")):
            if fields[1] == "inet":
                if fields[0] != "smtp":
                    continue  # only our one listener; no submission/smtps on system ports
                fields[0] = f"{LOOPBACK}:{port}"
            fields[4] = "n"  # chroot: the private root holds no /etc copies
            line = " ".join(fields)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _postfix(config_dir: Path, command: str, *, check: bool = True) -> None:
    result = subprocess.run(
        [POSTFIX, "-c", str(config_dir), command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and result.returncode != 0:
        raise PostfixError(f"postfix {command} failed: {result.stderr.strip() or result.stdout}")


def _wait_for_banner(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
                if sock.recv(512).startswith(b"220"):
                    return
        except OSError as error:
            last_error = error
        time.sleep(0.05)
    raise PostfixError(f"postfix did not greet on {LOOPBACK}:{port}: {last_error}")


def _is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
