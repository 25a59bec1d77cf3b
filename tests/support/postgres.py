"""A private PostgreSQL server (Debian's `postgresql` package) for the cluster queue's tests.

Owns: `initdb` into a temporary folder, starting `postgres` in the foreground on a loopback port
with its unix socket in that folder, a role and a database for mailgate (password auth over TCP,
trust over the private socket for the test's own set-up), stopping and restarting it by its PID.
initdb refuses to run as root: when the tests run as root (CI) every PostgreSQL binary runs as
the unprivileged `postgres` user the Debian package creates, on a folder chowned to it.
Must NOT: start, stop or connect to the system's cluster (pg_ctlcluster, port 5432), or listen
beyond 127.0.0.1.
"""

from __future__ import annotations

import glob
import os
import pwd
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SERVICE_USER = "postgres"
SUPERUSER = "postgres"
ROLE = "mailgate"
PASSWORD = "queue-secret"
DATABASE = "mailgate"


def bin_dir() -> Path | None:
    """The newest installed server's bin directory (/usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _demote():
    """A preexec function running the child as the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(SERVICE_USER)

    def demote() -> None:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return demote


@dataclass
class PostgresInstance:
    root: Path
    bin: Path
    port: int
    fsync: bool
    process: subprocess.Popen[bytes] | None = None
    databases: int = 0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def dsn(self) -> str:
        """What mailgate's `[queue] dsn` gets: no password (that is in the password file)."""
        return f"host=127.0.0.1 port={self.port} user={ROLE} dbname={DATABASE}"

    @property
    def admin_dsn(self) -> str:
        """The superuser over the private unix socket (trust): for the tests' own checks."""
        return f"host={self.root} port={self.port} user={SUPERUSER} dbname={DATABASE}"

    def new_database(self) -> str:
        """A fresh, empty database owned by the mailgate role; returns its DSN (no password)."""
        self.databases += 1
        name = f"{DATABASE}_{self.databases}"
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE}", database="postgres")
        return f"host=127.0.0.1 port={self.port} user={ROLE} dbname={name}"

    def write_password_file(self, path: Path) -> Path:
        path.write_text(PASSWORD + "\n")
        path.chmod(0o600)
        return path

    def start(self) -> None:
        """(Re)start on the same port and data directory; returns once it accepts connections."""
        command = [
            str(self.bin / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
            "-c", f"fsync={'on' if self.fsync else 'off'}", "-c", "max_connections=200",
            "-c", "shared_buffers=64MB", "-c", "logging_collector=off",
        ]
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=log, preexec_fn=_demote(), cwd=self.root,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_tail()}")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", str(self.root), "-p", str(self.port), "-q"],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not start: {self.log_tail()}")

    def stop(self, mode: signal.Signals = signal.SIGINT) -> None:
        """SIGINT: fast shutdown (clients are cut off); SIGQUIT: immediate (a crash, WAL replay)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(mode)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def psql(self, sql: str, database: str = DATABASE) -> str:
        """Run SQL as the superuser over the private socket; returns psql's unaligned output."""
        result = subprocess.run(
            [str(self.bin / "psql"), "-h", str(self.root), "-p", str(self.port), "-U", SUPERUSER,
             "-d", database, "-v", "ON_ERROR_STOP=1", "-XAtq", "-c", sql],
            capture_output=True, text=True, preexec_fn=_demote(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def log_tail(self) -> str:
        try:
            return (self.root / "postgres.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def cleanup(self) -> None:
        """Quick, because a session fixture's teardown runs under the last test's time-out: an
        immediate stop (nothing of a throwaway cluster needs keeping), and the data folder removed
        by a detached `rm` rather than file by file here."""
        self.stop(signal.SIGQUIT)
        subprocess.Popen(["rm", "-rf", "--", str(self.root)], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_postgres(*, fsync: bool = False) -> PostgresInstance:
    """A fresh private cluster with role `mailgate` (password PASSWORD) owning database `mailgate`.

    fsync off by default: the tests kill mailgate or restart PostgreSQL, never the machine, and
    the operating system keeps what PostgreSQL wrote. The benchmark passes fsync=True.
    """
    binaries = bin_dir()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed (Debian package postgresql)")
    root = Path(tempfile.mkdtemp(prefix="mailgate-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVICE_USER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    instance = PostgresInstance(root, binaries, free_port(), fsync)
    try:
        subprocess.run(
            [str(binaries / "initdb"), "-D", str(instance.data_dir), "-U", SUPERUSER, "-E", "UTF8",
             "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
            check=True, capture_output=True, preexec_fn=_demote(), cwd=root,
        )
        instance.start()
        instance.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'", database="postgres")
        instance.psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}", database="postgres")
    except BaseException:
        instance.cleanup()
        raise
    return instance
