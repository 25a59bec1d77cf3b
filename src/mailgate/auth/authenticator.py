"""The real `MessageAuthenticator`: DKIM signing for internal mail, inbound checks for the rest.

Owns: putting the signer and the inbound checker behind the interface of message.py, and the
thread pool the inbound checks run in (DNS waits, and canonicalisation of a large body takes
milliseconds: never on the event loop). Signing runs in the caller's own worker thread.
Must not: decide policy itself (inbound.py does) or choose keys (dkim_sign.py does).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from mailgate.auth.dkim_sign import DkimSigner
from mailgate.auth.message import NOT_CHECKED, InboundVerdict, Origin

log = logging.getLogger("mailgate.auth")

# Threads for verification. Most of their time is spent waiting for DNS answered
# by the event loop (an SPF check may wait up to spf_time_limit on a sender's slow servers), and
# one message takes four of them at once (SPF twice, DKIM, ARC): a small pool would let one
# sender's slow DNS stall every inbound message of the worker. CPU work is bounded by the GIL.
THREADS = 32


class Authenticator:
    def __init__(self, signer: DkimSigner | None, inbound=None) -> None:
        self.signer = signer
        self.inbound = inbound  # auth.inbound.InboundChecker, or None: no inbound checks
        self._executor = ThreadPoolExecutor(THREADS, thread_name_prefix="mailgate-auth")

    async def check(self, message: bytes, origin: Origin) -> InboundVerdict:
        if origin.internal or self.inbound is None:
            return NOT_CHECKED
        return await self.inbound.check(message, origin, self._executor)

    def sign(self, message: bytes) -> bytes | None:
        """CPU work only (no DNS): the caller runs it off the event loop."""
        if self.signer is None:
            return None
        signatures, detail = self.signer.sign(message)
        if not signatures:
            log.debug("not signed: %s", detail)
            return None
        return signatures + message

    async def finish(self, message: bytes, verdict: InboundVerdict) -> bytes | None:
        if self.inbound is None:
            return None
        return await self.inbound.finish(message, verdict, self._executor)

    def close(self) -> None:
        self._executor.shutdown(wait=False)
