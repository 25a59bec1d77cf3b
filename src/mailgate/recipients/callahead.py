"""The call-ahead source: ask the hosted domain's next hop whether it would take a recipient.

Owns: the probe dialogue (as Postfix's reject_unverified_recipient and verify(8)): EHLO, STARTTLS
under the domain's TLS policy, `MAIL FROM:<>`, `RCPT TO:<address>`, then QUIT; never DATA, so no
message is ever delivered by a probe. Next hops are tried in order until one answers. The answer
is cached (positive answers long, negative ones shorter; see cache.py) and concurrent probes of
one address are merged into one connection. Outcomes: 2yz to RCPT is found; 5yz to RCPT is not
found (RFC 5321 §4.2.1: permanent); a 4yz anywhere, a refused MAIL, or no next hop reachable is
unavailable (the session answers 451 4.4.3), never a guess.
Must not: send DATA or BDAT, or use the delivery pool (a probe must never leave a delivery
connection in a transaction). The SMTP client is aiosmtplib, a maintained asyncio client,
because the probe is a short, stateless dialogue beside delivery, not a delivery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiosmtplib

from mailgate.recipients.cache import LookupCache
from mailgate.recipients.source import Lookup, LookupStatus

log = logging.getLogger("mailgate.recipients")


@dataclass(frozen=True)
class ProbeTarget:
    """Where a hosted domain's mail goes next, and how to secure the probe."""

    hops: tuple[tuple[str, int], ...]
    tls: str = "may"  # none | may | encrypt | verify, as the domain's delivery policy
    ca_file: str | None = None


class CallAheadSource:
    kind = "callahead"

    def __init__(
        self, name: str, targets: dict[str, ProbeTarget], helo_name: str, timeout: float, cache: LookupCache,
    ) -> None:
        self.name = name
        self.targets = targets
        self.helo_name = helo_name
        self.timeout = timeout
        self.cache = cache

    async def lookup(self, address: str) -> Lookup:
        return await self.cache.get(address.lower(), lambda: self._probe(address))

    def reload(self) -> None:
        """SIGHUP keeps the cache: the answers stay true; a new configuration builds a new source."""

    def close(self) -> None:
        """Probes hold no connection between look-ups."""

    def _target(self, domain: str) -> ProbeTarget | None:
        labels = domain.split(".")
        for start in range(len(labels)):
            target = self.targets.get(".".join(labels[start:]))
            if target is not None:
                return target
        return None

    async def _probe(self, address: str) -> Lookup:
        target = self._target(address.rpartition("@")[2])
        if target is None or not target.hops:
            return Lookup(LookupStatus.UNAVAILABLE, self.name, detail="no next hop to ask")
        problems = []
        for host, port in target.hops:
            try:
                return await self._ask(host, port, target, address)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                problems.append(f"{host}:{port}: {exc}")
        detail = "; ".join(problems)
        log.warning("recipient source %s: no next hop answered for <%s>: %s", self.name, address, detail)
        return Lookup(LookupStatus.UNAVAILABLE, self.name, detail=detail)

    async def _ask(self, host: str, port: int, target: ProbeTarget, address: str) -> Lookup:
        client = aiosmtplib.SMTP(
            hostname=host, port=port, local_hostname=self.helo_name, timeout=self.timeout,
            start_tls=None if target.tls == "may" else target.tls in ("encrypt", "verify"),
            validate_certs=target.tls == "verify", cert_bundle=target.ca_file,
        )
        await client.connect()
        try:
            await client.mail("")
            try:
                reply = await client.rcpt(address)
            except aiosmtplib.SMTPRecipientRefused as refused:
                status = LookupStatus.NOT_FOUND if refused.code >= 500 else LookupStatus.UNAVAILABLE
                return Lookup(status, self.name, detail=f"{refused.code} {refused.message}")
            return Lookup(LookupStatus.FOUND, self.name, detail=f"{reply.code} {reply.message}")
        except aiosmtplib.SMTPSenderRefused as refused:
            # The next hop will not talk to the null sender: it cannot tell us anything.
            return Lookup(LookupStatus.UNAVAILABLE, self.name, detail=f"MAIL refused: {refused.code} {refused.message}")
        finally:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
