"""Console log-in sessions: who is logged in, until when, and the CSRF token of each session.

Owns: opening a session for an admin who proved their password, finding it again from the
session cookie (absolute lifetime `console.session_lifetime`; idle time-out a quarter of it, at
least 15 minutes), closing it at log-out, and the per-session CSRF token that every
state-changing request must carry (compared in constant time).
Must not: check passwords (auth/store.py), count failed log-ins (auth/lockout.py) or speak HTTP.

Sessions live in the memory of the process serving the console (worker 0, console/server.py):
a restart logs everyone out, which is the safe direction. Their number is bounded: past
MAX_SESSIONS the least recently used is dropped.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from mailgate.core.clock import Clock

MAX_SESSIONS = 1000
MIN_IDLE = 900.0  # seconds: an idle session ends after a quarter of its lifetime, never sooner


@dataclass(slots=True)
class Session:
    user: str
    csrf: str
    created: float
    last_seen: float
    client_ip: str


class Sessions:
    def __init__(self, clock: Clock, lifetime: float) -> None:
        self._clock = clock
        self.lifetime = lifetime  # replaceable on reload
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    @property
    def idle_limit(self) -> float:
        return min(self.lifetime, max(self.lifetime / 4, MIN_IDLE))

    def open(self, user: str, client_ip: str) -> tuple[str, Session]:
        """A new session: its cookie token (256 random bits) and the session."""
        now = self._clock.now()
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), now, now, client_ip)
        self._by_token[token] = session
        while len(self._by_token) > MAX_SESSIONS:
            self._by_token.popitem(last=False)
        return token, session

    def find(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._by_token.get(token)
        if session is None:
            return None
        now = self._clock.now()
        if now - session.created >= self.lifetime or now - session.last_seen >= self.idle_limit:
            del self._by_token[token]
            return None
        session.last_seen = now
        self._by_token.move_to_end(token)
        return session

    def close(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)

    def __len__(self) -> int:
        return len(self._by_token)


def csrf_matches(session: Session, submitted: str | None) -> bool:
    return bool(submitted) and hmac.compare_digest(session.csrf.encode(), str(submitted).encode())
