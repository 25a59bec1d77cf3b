"""OpenDKIM as Postfix's signing milter, for `--dkim` runs: Postfix doing mailgate's signing job.

Owns: starting a private `opendkim` (Debian's opendkim package, 2.11) in the foreground on a
UNIX-domain milter socket (as Debian's own opendkim.conf sets it up; over loopback TCP, small milter
replies meet delayed ACKs and a message waited 130-190 ms), signing every message from the bench's sender domain with one key
(relaxed/relaxed, From/Subject/To/Date/Message-ID oversigned as in mailgate's defaults), and the
Postfix settings that send mail through a chain of such milters. OpenDKIM's signature algorithm is
one setting per instance (an Ed25519 key under the default rsa-sha256 fails with "resource
unavailable"), so dual signing as mailgate does it (RSA and Ed25519) takes two instances in a row,
the usual way to dual-sign with OpenDKIM.
That is how a Postfix site signs (the issue that asked for built-in signing names OpenDKIM), so the
`postfix-dkim` row of the table is the like-for-like reference for signed throughput; the plain
`postfix` row stays beside it. Must not: verify anything or start without the keys.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

OPENDKIM = "/usr/sbin/opendkim"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
# mailgate's [dkim] defaults (config/schema.py), so both sign the same header list.
OVERSIGNED = "From,Subject,To,Date,Message-ID"


class MilterError(RuntimeError):
    """OpenDKIM could not be started; the message says why."""


def available() -> str:
    """"" when OpenDKIM's milter can run here; otherwise why not."""
    if shutil.which(OPENDKIM) is None and not Path(OPENDKIM).exists():
        return "opendkim is not installed (apt-get install opendkim)"
    return ""


def start(workdir: Path, domain: str, selector: str, key: Path, algorithm: str) -> tuple[Path, int, Callable[[], None]]:
    """opendkim listening on a socket in `workdir`, signing mail from `domain` with the PEM key file
    `key` under `selector` and `algorithm` (rsa-sha256 | ed25519-sha256); (the socket, its PID, how
    to stop it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    # A short path: sun_path holds 108 octets, and the bench's work directories are deeper.
    socket_dir = Path(tempfile.mkdtemp(prefix="mailgate-opendkim-"))
    socket_dir.chmod(0o755)  # Postfix's smtpd (user postfix) connects to the socket in it
    milter_socket = socket_dir / "milter.sock"
    key_table = workdir / "key.table"
    signing_table = workdir / "signing.table"
    key_table.write_text(f"{selector}._domainkey.{domain} {domain}:{selector}:{key}\n")
    signing_table.write_text(f"*@{domain} {selector}._domainkey.{domain}\n")
    config = workdir / "opendkim.conf"
    config.write_text(
        f"Syslog no\nMode s\nCanonicalization relaxed/relaxed\nSignatureAlgorithm {algorithm}\n"
        f"KeyTable file:{key_table}\nSigningTable refile:{signing_table}\n"
        f"OversignHeaders {OVERSIGNED}\nInternalHosts 127.0.0.1\n"
        f"Socket local:{milter_socket}\nUMask 000\nRequireSafeKeys no\n"
    )
    log = open(workdir / "opendkim.log", "wb")  # noqa: SIM115 - closed by stop()
    process = subprocess.Popen([OPENDKIM, "-f", "-x", str(config)], stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT)

    def stop() -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        log.close()
        shutil.rmtree(socket_dir, ignore_errors=True)

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop()
            raise MilterError(f"opendkim exited: {(workdir / 'opendkim.log').read_text(errors='replace')[-2000:]}")
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(milter_socket))
            return milter_socket, process.pid, stop
        except OSError:
            time.sleep(0.1)
    stop()
    raise MilterError("opendkim did not listen within the start timeout")


def postfix_settings(sockets: list[Path]) -> dict[str, str]:
    """main.cf settings that pass every message received over SMTP through the milters, in order;
    a milter that fails makes the message a 4xx, never an unsigned 250."""
    milters = " ".join(f"unix:{path}" for path in sockets)
    return {"smtpd_milters": milters, "milter_default_action": "tempfail"}
