"""A private OpenLDAP server (Debian's slapd) for the recipient-validation tests.

Owns: a slapd.conf, a schema holding an Active Directory style `proxyAddresses` attribute
(equality caseIgnoreMatch, so `smtp:` and `SMTP:` prefixes compare as AD compares them), an MDB
database filled with slapadd, TLS material when asked, starting slapd in the foreground on
loopback ports (ldap:// and ldaps://), waiting until it answers, and stopping it by its PID.
Must NOT: touch the system slapd (/etc/ldap/slapd.d, /var/lib/ldap) or listen beyond 127.0.0.1.
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

from tests.conftest import free_port

START_TIMEOUT_S = 30.0
BASE_DN = "dc=corp,dc=test"
ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "directory-secret"
MODULE_PATH = "/usr/lib/ldap"

# A private OID arc (the "example" enterprise number 32473, RFC 5612) for the test schema.
AD_LIKE_SCHEMA = """\
attributetype ( 1.3.6.1.4.1.32473.1.1 NAME 'proxyAddresses'
    EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
objectclass ( 1.3.6.1.4.1.32473.2.1 NAME 'mailRecipient' SUP top AUXILIARY
    MAY ( proxyAddresses ) )
"""


def person(uid: str, mail: str, *proxy_addresses: str) -> str:
    lines = [
        f"dn: uid={uid},ou=people,{BASE_DN}", "objectClass: inetOrgPerson", "objectClass: mailRecipient",
        f"uid: {uid}", f"cn: {uid}", f"sn: {uid}", f"mail: {mail}",
    ]
    lines += [f"proxyAddresses: {address}" for address in proxy_addresses]
    return "\n".join(lines) + "\n"


def directory_ldif(people: list[str]) -> str:
    head = (
        f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: corp\no: Corp\n\n"
        f"dn: ou=people,{BASE_DN}\nobjectClass: organizationalUnit\nou: people\n\n"
    )
    return head + "\n".join(people)


@dataclass
class SlapdInstance:
    root: Path
    process: subprocess.Popen[bytes] | None
    port: int
    tls_port: int | None
    command: list[str]

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def tls_uri(self) -> str:
        return f"ldaps://localhost:{self.tls_port}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def start(self) -> None:
        """(Re)start on the same ports and database."""
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"slapd exited: {self.process.stderr.read().decode(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("slapd did not start listening")

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_slapd(binary: str, people: list[str], tls: tuple[str, str, str] | None = None) -> SlapdInstance:
    """tls: (certificate chain file, key file, CA file) for ldaps:// and StartTLS."""
    root = Path(tempfile.mkdtemp(prefix="mailgate-slapd-"))
    (root / "db").mkdir()
    (root / "ad-like.schema").write_text(AD_LIKE_SCHEMA)
    tls_lines = ""
    if tls is not None:
        chain, key, ca = tls
        tls_lines = f"TLSCertificateFile {chain}\nTLSCertificateKeyFile {key}\nTLSCACertificateFile {ca}\n"
    (root / "slapd.conf").write_text(
        "include /etc/ldap/schema/core.schema\n"
        "include /etc/ldap/schema/cosine.schema\n"
        "include /etc/ldap/schema/inetorgperson.schema\n"
        f"include {root}/ad-like.schema\n"
        f"pidfile {root}/slapd.pid\n"
        f"modulepath {MODULE_PATH}\nmoduleload back_mdb\n"
        f"{tls_lines}"
        "database mdb\n"
        f"suffix \"{BASE_DN}\"\nrootdn \"{ADMIN_DN}\"\nrootpw {ADMIN_PASSWORD}\n"
        f"directory {root}/db\nmaxsize 10485760\n"
        "index mail,proxyAddresses eq\n"
        "access to * by dn.exact=\"" + ADMIN_DN + "\" read by anonymous auth by * none\n"
    )
    (root / "data.ldif").write_text(directory_ldif(people))
    subprocess.run(
        [str(Path(binary).with_name("slapadd")), "-f", str(root / "slapd.conf"), "-l", str(root / "data.ldif")],
        check=True, capture_output=True,
    )
    port = free_port()
    tls_port = free_port() if tls is not None else None
    urls = f"ldap://127.0.0.1:{port}/" + (f" ldaps://127.0.0.1:{tls_port}/" if tls_port else "")
    command = [binary, "-f", str(root / "slapd.conf"), "-h", urls, "-d", "0"]
    instance = SlapdInstance(root, None, port, tls_port, command)
    try:
        instance.start()
    except BaseException:
        instance.cleanup()
        raise
    return instance
