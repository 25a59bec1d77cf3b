"""AUTH in a session (RFC 4954): the SASL steps, the credential check and the lock-out.

Owns: driving one SASL exchange (smtp/sasl.py) to a reply: 334 challenges, 235 on success,
535 5.7.8 after a growing delay on failure, 454 4.7.0 while the client address is locked out.
The argon2 check runs in a thread so the event loop never waits for it. Must not: decide what
an authenticated user may do (policy/) or offer AUTH outside TLS (the protocol refuses that).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mailgate.core.reply import AUTH_FAILED, AUTH_OK, TEMP_AUTH_FAILURE, Reply
from mailgate.smtp.sasl import Challenge, Credentials, SaslError, SaslExchange

log = logging.getLogger("mailgate.smtp")


class Authentication:
    """One AUTH command's exchange; `user` is set once the credentials were accepted."""

    def __init__(self, users: Any, lockout: Any, client: str) -> None:
        self._users = users  # auth.store.UserStore
        self._lockout = lockout  # auth.lockout.AuthFailureTracker
        self._client = client
        self._exchange: SaslExchange | None = None
        self.user: str | None = None

    async def start(self, mechanism: str, initial_response: str | None) -> Reply:
        if self._lockout.is_locked(self._client):
            return TEMP_AUTH_FAILURE  # 454 4.7.0
        self._exchange = SaslExchange(mechanism, initial_response)
        return await self._result(self._exchange.challenge())

    async def step(self, line: str) -> Reply:
        if self._exchange is None:
            return AUTH_FAILED
        return await self._result(self._exchange.feed(line))

    async def _result(self, step: Challenge | Credentials | SaslError) -> Reply:
        if isinstance(step, Challenge):
            return step.reply
        self._exchange = None
        if isinstance(step, SaslError):
            return step.reply
        if not self._lockout.begin_check(self._client):
            return TEMP_AUTH_FAILURE  # 454 4.7.0: locked out, or as many checks in flight as allowed
        try:
            # RFC 4616 §2: acting as another identity (authzid) is not supported.
            valid = (not step.authzid or step.authzid == step.user) and await asyncio.to_thread(
                self._users.verify, step.user, step.password
            )
            if valid:
                self._lockout.success(self._client)
            else:
                self._lockout.failure(self._client)
        finally:
            self._lockout.end_check(self._client)
        if valid:
            self.user = step.user.lower()
            log.info("authenticated %s from %s", self.user, self._client)
            return AUTH_OK
        log.info("authentication failed for %r from %s", step.user, self._client)
        await asyncio.sleep(self._lockout.delay_for(self._client))
        return AUTH_FAILED  # 535 5.7.8
