"""What reception does with bare CR/LF and over-long lines, for one client.

Owns: `LineRules` (server.bare_newline, bare_newline_exclusions, bare_newline_exclude_trusted and
long_lines) and the mode a given client gets: an excluded client (a listed network, or a trusted
one when trusted networks are excluded) is never refused for a bare CR or LF, its mail is
normalized instead (like Postfix's `smtpd_forbid_bare_newline_exclusions`).
Must not: scan message data (smtp/data.py) or answer SMTP (session.py).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

NORMALIZE, REJECT, KEEP = "normalize", "reject", "no"  # server.bare_newline


@dataclass(frozen=True)
class LineRules:
    bare_newline: str = NORMALIZE
    exclusions: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    exclude_trusted: bool = True
    long_lines: str = "wrap"  # "wrap" | "refuse"

    @classmethod
    def from_config(cls, server: Any) -> "LineRules":
        return cls(
            server.bare_newline, tuple(server.bare_newline_exclusions),
            server.bare_newline_exclude_trusted, server.long_lines,
        )

    def bare_newline_for(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: bool) -> str:
        if self.bare_newline != REJECT:
            return self.bare_newline
        excluded = (trusted and self.exclude_trusted) or any(
            address.version == network.version and address in network for network in self.exclusions
        )
        return NORMALIZE if excluded else REJECT

    @property
    def refuse_long_lines(self) -> bool:
        return self.long_lines == "refuse"
