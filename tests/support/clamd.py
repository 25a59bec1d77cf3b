"""A private clamd (Debian's clamav-daemon) for tests and the benchmark.

Owns: writing a clamd.conf and a tiny signature database under one temporary directory (the
official databases cannot be downloaded here), starting clamd in the foreground on a unix
socket and a loopback TCP port, waiting until it answers PING, and stopping it by its PID.
The database holds one body signature (`.ndb`, ClamAV "Creating signatures" §"Body-based
signatures") matching the EICAR test string, named `Mailgate.Test.EICAR`.
Must NOT: touch the system clamd (/etc/clamav, /var/lib/clamav) or listen beyond 127.0.0.1.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
SIGNATURE_NAME = "Mailgate.Test.EICAR"
# The EICAR anti-virus test file (eicar.org), built from two halves so that this source file
# itself is not what a scanner on a developer's machine flags.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def signature_database() -> str:
    """`.ndb` line: Name:TargetType(0 = any file):Offset(* = anywhere):HexSignature."""
    return f"{SIGNATURE_NAME}:0:*:{EICAR.hex()}\n"


@dataclass
class ClamdInstance:
    root: Path
    process: subprocess.Popen[bytes]
    socket_path: Path
    port: int

    @property
    def unix_address(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def tcp_address(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.root / "clamd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "ClamdInstance":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ping(socket_path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(socket_path))
            sock.sendall(b"zPING\0")
            return sock.recv(16) == b"PONG\0"
    except OSError:
        return False


def start_clamd(binary: str, port: int) -> ClamdInstance:
    """Start clamd (run as root: it keeps the invoking user when `User` is not set)."""
    root = Path(tempfile.mkdtemp(prefix="mailgate-clamd-"))
    database = root / "db"
    database.mkdir()
    (database / "mailgate-test.ndb").write_text(signature_database())
    socket_path = root / "clamd.sock"
    config = root / "clamd.conf"
    config.write_text("\n".join([
        f"LocalSocket {socket_path}",
        "FixStaleSocket yes",
        "TCPAddr 127.0.0.1",
        f"TCPSocket {port}",
        f"DatabaseDirectory {database}",
        f"TemporaryDirectory {root}",
        f"LogFile {root / 'clamd.log'}",
        f"PidFile {root / 'clamd.pid'}",
        "Foreground yes",
        "Bytecode no",
        "ScanMail yes",
        "ScanArchive yes",
        "SelfCheck 0",
        "MaxThreads 4",
        "StreamMaxLength 25M",
        "",
    ]))
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    instance = ClamdInstance(root, process, socket_path, port)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = instance.log()
            instance.stop()
            raise RuntimeError(f"clamd exited with {process.returncode}: {log[-2000:]}")
        if _ping(socket_path):
            return instance
        time.sleep(0.1)
    log = instance.log()
    instance.stop()
    raise RuntimeError(f"clamd did not answer PING within {START_TIMEOUT_S}s: {log[-2000:]}")
