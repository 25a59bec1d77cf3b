"""What the end-to-end tests need from the machine, and the Debian package that provides each.

Owns: the list of peer capabilities (a binary, a Perl module swaks loads for TLS) with the
package that brings it, and checking them. scripts/install-peers installs the same list.
Must NOT: install anything (install-peers does, as root) or start a peer.
"""

from __future__ import annotations

import glob
import os
import subprocess
from dataclasses import dataclass

# Debian 12 ships PostgreSQL 15; a newer Debian another major version in its own directory.
POSTGRES_INITDB = (sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or ["/usr/lib/postgresql/15/bin/initdb"])[-1]


@dataclass(frozen=True)
class Capability:
    what: str  # as a person would name it
    package: str  # the Debian package that provides it
    binary: str | None = None
    perl_module: str | None = None

    def present(self) -> bool:
        if self.binary is not None:
            return os.access(self.binary, os.X_OK)
        try:
            result = subprocess.run(["perl", f"-M{self.perl_module}", "-e1"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0


SWAKS_TLS = (
    Capability("Perl module Net::SSLeay (swaks --tls)", "libnet-ssleay-perl", perl_module="Net::SSLeay"),
    Capability("Perl module IO::Socket::SSL (swaks --tls)", "libio-socket-ssl-perl", perl_module="IO::Socket::SSL"),
)
# The web console's browser tests (tests/e2e/test_console_browser.py): Selenium drives Debian's
# Chromium through its chromedriver, named by path so Selenium Manager never downloads one.
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BROWSER = (
    Capability("chromium (the console's browser tests)", "chromium", binary=CHROMIUM),
    Capability("chromedriver (the console's browser tests)", "chromium-driver", binary=CHROMEDRIVER),
)
CAPABILITIES = (
    Capability("postfix", "postfix", binary="/usr/sbin/postfix"),
    Capability("swaks", "swaks", binary="/usr/bin/swaks"),
    *SWAKS_TLS,
    Capability("clamd", "clamav-daemon", binary="/usr/sbin/clamd"),
    Capability("rspamd", "rspamd", binary="/usr/bin/rspamd"),
    Capability("opendkim-testmsg", "opendkim-tools", binary="/usr/sbin/opendkim-testmsg"),
    Capability("slapd", "slapd", binary="/usr/sbin/slapd"),
    Capability("slapadd", "slapd", binary="/usr/sbin/slapadd"),
    Capability("mount (the tmpfs of the disk-full tests)", "mount", binary="/usr/bin/mount"),
    Capability("PostgreSQL initdb (the cluster queue store's tests)", "postgresql", binary=POSTGRES_INITDB),
    *BROWSER,
)


def missing(capabilities: tuple[Capability, ...] = CAPABILITIES) -> list[Capability]:
    return [capability for capability in capabilities if not capability.present()]


def describe(absent: list[Capability]) -> str:
    """One line naming what is missing and the packages to install."""
    packages = " ".join(capability.package for capability in absent)
    whats = ", ".join(capability.what for capability in absent)
    return f"missing real peer capability: {whats}; install Debian package(s): {packages} (sh scripts/install-peers as root)"
