"""AUTH failure tracking per client address: a growing delay, then a lock-out (SPEC §4).

Owns: `AuthFailureTracker`, which remembers recent AUTH failures per client and answers how long
to wait before the next reply (`delay_for`) and whether AUTH is refused outright (`is_locked`, the
server then answers 454 4.7.0, `core.reply.TEMP_AUTH_FAILURE`, RFC 4954 §6).
Must not: sleep, send replies or verify passwords; it is pure, with an injected clock.

Checks in flight count as failures-to-be (`begin_check`/`end_check`): without that, 200 AUTH
commands sent at once all passed `is_locked` before the first failure was recorded, and 200
passwords were tried instead of `max_failures` (issue 21 item 6).

Clients are keyed by IPv4 address, or by IPv6 /64 prefix: one host usually holds a whole /64, so
counting single IPv6 addresses would let it try without end. Memory is bounded: the
least recently failing clients are dropped past `max_clients`, and entries with nothing left to
remember are pruned as the tracker is used. Not thread-safe: it lives on the event loop.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from itertools import islice

from mailgate.core.clock import Clock

IPV6_CLIENT_PREFIX = 64
# Entries looked at for pruning on each failure: keeps the cost of one call small and bounded.
_PRUNE_PER_CALL = 8


@dataclass(slots=True)
class _Client:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class AuthFailureTracker:
    def __init__(
        self,
        clock: Clock,
        max_failures: int = 5,
        window: float = 900.0,
        lockout: float = 900.0,
        base_delay: float = 1.0,
        max_delay: float = 8.0,
        max_clients: int = 100_000,
    ) -> None:
        if max_failures < 1 or max_clients < 1:
            raise ValueError("max_failures and max_clients must be at least 1")
        self._clock = clock
        self._max_failures = max_failures
        self._window = window
        self._lockout = lockout
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._max_clients = max_clients
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._checking: Counter[str] = Counter()  # password checks in flight per client key

    def begin_check(self, client_ip: str) -> bool:
        """Before a password check: False (refuse it) when locked out, or when the checks in
        flight could already reach `max_failures` with the recent failures; else count it."""
        key = client_key(client_ip)
        if self.is_locked(client_ip):
            return False
        client = self._clients.get(key)
        if client is not None:
            self._forget_old_failures(client, self._clock.now())
        recent = len(client.failures) if client is not None else 0
        if recent + self._checking[key] >= self._max_failures:
            return False
        self._checking[key] += 1
        return True

    def end_check(self, client_ip: str) -> None:
        """After the check `begin_check` allowed (call `failure` or `success` first)."""
        key = client_key(client_ip)
        self._checking[key] -= 1
        if self._checking[key] <= 0:
            del self._checking[key]

    def failure(self, client_ip: str) -> None:
        """Record one failed AUTH; the `max_failures`-th within `window` starts a lock-out."""
        now = self._clock.now()
        key = client_key(client_ip)
        client = self._clients.pop(key, None) or _Client(deque(maxlen=self._max_failures))
        self._clients[key] = client  # most recent at the end
        self._forget_old_failures(client, now)
        client.failures.append(now)
        if len(client.failures) >= self._max_failures:
            client.locked_until = now + self._lockout
        self._prune(now)

    def success(self, client_ip: str) -> None:
        """Forget the client's failures; a lock-out already running still runs to its end."""
        key = client_key(client_ip)
        client = self._clients.get(key)
        if client is None:
            return
        client.failures.clear()
        if client.locked_until <= self._clock.now():
            del self._clients[key]

    def is_locked(self, client_ip: str) -> bool:
        client = self._clients.get(client_key(client_ip))
        return client is not None and client.locked_until > self._clock.now()

    def delay_for(self, client_ip: str) -> float:
        """Seconds to wait before answering: 0, then base_delay doubling per recent failure."""
        client = self._clients.get(client_key(client_ip))
        if client is None:
            return 0.0
        self._forget_old_failures(client, self._clock.now())
        count = len(client.failures)
        if count == 0:
            return 0.0
        return min(self._base_delay * 2 ** (count - 1), self._max_delay)

    def __len__(self) -> int:
        return len(self._clients)

    def _forget_old_failures(self, client: _Client, now: float) -> None:
        while client.failures and client.failures[0] <= now - self._window:
            client.failures.popleft()

    def _prune(self, now: float) -> None:
        for key in list(islice(self._clients, _PRUNE_PER_CALL)):
            client = self._clients[key]
            self._forget_old_failures(client, now)
            if not client.failures and client.locked_until <= now:
                del self._clients[key]
        while len(self._clients) > self._max_clients:
            self._clients.popitem(last=False)


def client_key(client_ip: str) -> str:
    """The address an entry is kept under: IPv4 as is, IPv6 as its /64, anything else verbatim."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    return address_key(address)


def address_key(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """`client_key` of an address already parsed."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)
