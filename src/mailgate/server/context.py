"""What every session of a listener shares: the listener's profile and the reception services.

Owns: the two plain records app.py fills and sessions read (`ListenerProfile` and `Reception`,
both reloaded in place on SIGHUP by an explicit method). Must not: hold behaviour.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from mailgate.observe.translog import TransactionLog
from mailgate.policy.limits import MessageRateLimits
from mailgate.policy.relay import RelayPolicy
from mailgate.queue.store import QueueStore
from mailgate.screen import Screener
from mailgate.server.cpu_handover import CpuHandover
from mailgate.server.line_rules import LineRules


@dataclass
class ListenerProfile:
    """What a listener offers; reloaded in place on SIGHUP."""

    name: str
    profile: str  # mx | submission | smtps
    tls_mode: str  # none | starttls | implicit
    tls_context: ssl.SSLContext | None
    auth: str  # none | offered | required
    max_message_size: int
    command_timeout: float = 300.0
    data_timeout: float = 300.0
    data_deadline: float = 1800.0  # the whole data of one message (session.py)
    handshake_timeout: float = 20.0  # STARTTLS handshake
    error_budget: int = 10

    def reload(self, new: "ListenerProfile") -> None:
        """Take every setting of `new` (SIGHUP): the listener keeps this object and its sessions
        read it anew."""
        for setting in fields(self):
            setattr(self, setting.name, getattr(new, setting.name))


@dataclass
class Reception:
    """The services every session shares."""

    hostname: str
    policy: RelayPolicy
    users: Any  # auth.store.UserStore
    lockout: Any  # auth.lockout.AuthFailureTracker
    store: QueueStore
    delivery: Any  # delivery.runner.DeliveryRunner: reserve(), cancel(), hand_off(message), wake()
    max_recipients: int = 1000
    received_limit: int = 50
    received_shows_user: bool = False
    resolver: Any = None
    dnsbl_zones: tuple[str, ...] = ()
    events: TransactionLog = field(default=None)  # type: ignore[assignment]  # set by app.py
    rate_limits: MessageRateLimits | None = None
    disk: Any = None  # server.diskguard.DiskGuard: 452 4.3.1 under soft back-pressure
    clock: Any = None
    lines: LineRules = field(default_factory=LineRules)  # bare CR/LF and long lines
    screener: Screener | None = None
    authenticator: Any = None  # auth.message.MessageAuthenticator: DKIM signing, inbound checks
    postmaster_domain: str = ""  # where RCPT TO:<Postmaster> goes (app_config.postmaster_domain)
    recipients: Any = None  # recipients.source.RecipientValidation: asked at RCPT for hosted domains
    cpu_handover: CpuHandover = field(default_factory=CpuHandover)  # after the end of data's reply

    def reload(self, settings: Mapping[str, Any]) -> None:
        """Take the settings a reload changes (SIGHUP; app_config.reception_settings): each
        session reads them at its next use. A name that is no field is a bug, not a setting."""
        names = {setting.name for setting in fields(self)}
        unknown = set(settings) - names
        if unknown:
            raise TypeError(f"Reception has no field {sorted(unknown)}")
        for name, value in settings.items():
            setattr(self, name, value)
