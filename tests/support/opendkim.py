"""OpenDKIM's verifier (`opendkim-testmsg`, Debian's opendkim-tools) against a loopback zone.

Owns: running `opendkim-testmsg` on a message with its DNS answered by a `LoopbackDnsServer`,
and signing with it (it signs rsa-sha1 and relaxed/simple, its fixed defaults; it needs a Date:).
libopendkim asks the system resolver, which only speaks to port 53 of the addresses in
/etc/resolv.conf; so the verifier and the DNS server run together in a private network and
mount namespace (`unshare -n -m`, root only) where 127.0.0.1:53 is ours and /etc/resolv.conf is
bind-mounted to name it. Nothing of the host's network or files changes.
Must NOT: judge the outcome (the tests do) or run without the namespace.

`python -m tests.support.opendkim ZONE.json MESSAGE` is the half that runs inside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.dns_server import LoopbackDnsServer

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 60


@dataclass(frozen=True)
class Verification:
    returncode: int
    output: str

    @property
    def passed(self) -> bool:
        return self.returncode == 0


def available() -> str:
    """"" when opendkim-testmsg can run here; otherwise why not."""
    if shutil.which("opendkim-testmsg") is None and not Path("/usr/sbin/opendkim-testmsg").exists():
        return "opendkim-testmsg is not installed (scripts/install-peers)"
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare for a private network namespace"
    return ""


def verify(message: bytes, zone: dict, workdir: Path) -> Verification:
    """opendkim-testmsg's verdict on `message`, with DNS answered from `zone`."""
    zone_file, message_file = workdir / "opendkim-zone.json", workdir / "opendkim-message.eml"
    zone_file.write_text(json.dumps(zone))
    message_file.write_bytes(message)
    resolv = workdir / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
    inner = (
        f"ip link set lo up && mount --bind {resolv} /etc/resolv.conf && "
        f"exec {sys.executable} -m tests.support.opendkim {zone_file} {message_file}"
    )
    done = subprocess.run(
        ["unshare", "--net", "--mount", "sh", "-c", inner], cwd=ROOT, capture_output=True, text=True,
        timeout=TIMEOUT_S,
    )
    return Verification(done.returncode, done.stdout + done.stderr)


def _inside(zone_file: str, message_file: str) -> int:
    zone = json.loads(Path(zone_file).read_text())
    binary = shutil.which("opendkim-testmsg") or "/usr/sbin/opendkim-testmsg"
    with LoopbackDnsServer(zone, port=53), open(message_file, "rb") as message:
        done = subprocess.run([binary], stdin=message, capture_output=True, text=True, timeout=TIMEOUT_S)
    sys.stdout.write(done.stdout + done.stderr)
    return done.returncode


def sign(message: bytes, domain: str, selector: str, key_file: Path) -> bytes:
    """`message` with OpenDKIM's DKIM-Signature on top (no DNS needed to sign)."""
    binary = shutil.which("opendkim-testmsg") or "/usr/sbin/opendkim-testmsg"
    done = subprocess.run([binary, "-C", "-d", domain, "-s", selector, "-k", str(key_file)], input=message,
                          capture_output=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"opendkim-testmsg could not sign: {done.stderr.decode(errors='replace')}")
    return done.stdout


if __name__ == "__main__":
    sys.exit(_inside(sys.argv[1], sys.argv[2]))
