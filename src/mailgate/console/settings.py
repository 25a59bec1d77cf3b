"""The console's settings as the composition root hands them over (app_config.console_settings).

Owns: the one record; kept apart from the pages so that reading the configuration does not
import the web stack. Must not: read the configuration itself.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True)
class ConsoleSettings:
    host: str
    port: int
    tls_context: ssl.SSLContext | None  # None: plain HTTP (loopback only, config/loader.py)
    session_lifetime: float
    login_failures: int
