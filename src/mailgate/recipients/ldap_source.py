"""The LDAP source: Active Directory or OpenLDAP, asked whether an address belongs to anyone.

Owns: the servers in fail-over order (the first that binds is used), LDAPS or StartTLS with
certificate verification, the simple bind with the password read from a file, a small pool of
bound connections used from a dedicated thread pool (ldap3 is synchronous; the event loop only
awaits the thread, and authentication's threads are never taken), the search filter with the
address escaped (RFC 4515 §3: `*`, `(`, `)`, `\\` and NUL as \\XX), the answer cache, and the
mapping of every failure (no server reachable, bind refused, time-out, a search error) to
"unavailable": the session then answers 451 4.4.3, never an accept and never a 550.
Must not: write to the directory (connections are read-only) or know SMTP.

Filter placeholders: {address} (local@domain), {local}, {domain}. The default matches Exchange's
`proxyAddresses` (`smtp:` is the prefix of both primary `SMTP:` and secondary addresses; AD
compares it case-insensitively) and `mail`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from mailgate.recipients.cache import LookupCache
from mailgate.recipients.source import Lookup, LookupStatus

log = logging.getLogger("mailgate.recipients")

AD_DEFAULT_FILTER = "(|(proxyAddresses=smtp:{address})(mail={address}))"
SIZE_LIMIT_EXCEEDED = 4  # RFC 4511 §4.1.9 resultCode sizeLimitExceeded: more than one entry matched


@dataclass(frozen=True)
class LdapSettings:
    servers: tuple[str, ...]  # ldap://host[:port] or ldaps://host[:port], in fail-over order
    search_base: str
    filter: str = AD_DEFAULT_FILTER
    start_tls: bool = False
    ca_file: str | None = None
    bind_dn: str = ""
    bind_password_file: str = ""
    timeout: float = 5.0
    pool_size: int = 4


def search_filter(template: str, address: str) -> str:
    """The filter for one address, every value escaped as RFC 4515 §3 requires."""
    local, _, domain = address.rpartition("@")
    return template.format(
        address=escape_filter_chars(address), local=escape_filter_chars(local), domain=escape_filter_chars(domain)
    )


class LdapSource:
    kind = "ldap"

    def __init__(self, name: str, settings: LdapSettings, cache: LookupCache) -> None:
        self.name = name
        self.settings = settings
        self.cache = cache
        self.password = Path(settings.bind_password_file).read_text().strip() if settings.bind_password_file else ""
        self._idle: queue.SimpleQueue[ldap3.Connection] = queue.SimpleQueue()
        self._executor = ThreadPoolExecutor(max_workers=settings.pool_size, thread_name_prefix=f"ldap-{name}")

    async def lookup(self, address: str) -> Lookup:
        return await self.cache.get(address.lower(), lambda: self._ask(address))

    def reload(self) -> None:
        """SIGHUP: forget cached answers and reconnect (the password file may have changed)."""
        self.cache.clear()
        if self.settings.bind_password_file:
            try:
                self.password = Path(self.settings.bind_password_file).read_text().strip()
            except OSError as exc:
                log.warning("recipient source %s: cannot re-read %s: %s", self.name, self.settings.bind_password_file, exc)
        self._drop_idle()

    def close(self) -> None:
        self._drop_idle()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _ask(self, address: str) -> Lookup:
        loop = asyncio.get_running_loop()
        try:
            # The thread's own time-outs bound it; this bounds what the session waits for.
            return await asyncio.wait_for(
                loop.run_in_executor(self._executor, self._search, address), self.settings.timeout * 3
            )
        except TimeoutError:
            return Lookup(LookupStatus.UNAVAILABLE, self.name, detail="directory time-out")

    def _search(self, address: str) -> Lookup:
        """In a pool thread. After a failure the idle connections are dropped (the directory may
        have restarted) and the search is tried once more on a fresh connection."""
        problem = ""
        for fresh in (False, True):
            if fresh:
                self._drop_idle()
            # Any failure, even one ldap3 does not wrap, fails closed: 451, never an accept.
            try:
                connection = self._connection()
            except Exception as exc:  # noqa: BLE001
                problem = f"no directory server reachable: {exc}"
                continue
            try:
                found = self._found(connection, address)
            except Exception as exc:  # noqa: BLE001
                problem = f"search failed: {exc!r}"
                _unbind(connection)
                continue
            self._idle.put(connection)
            return Lookup(LookupStatus.FOUND if found else LookupStatus.NOT_FOUND, self.name)
        log.warning("recipient source %s: %s", self.name, problem)
        return Lookup(LookupStatus.UNAVAILABLE, self.name, detail=problem)

    def _found(self, connection: ldap3.Connection, address: str) -> bool:
        connection.search(
            self.settings.search_base, search_filter(self.settings.filter, address),
            search_scope=ldap3.SUBTREE, attributes=[], size_limit=1, time_limit=max(1, int(self.settings.timeout)),
        )
        code = connection.result.get("result", 0)
        if code not in (0, SIZE_LIMIT_EXCEEDED):
            raise LDAPException(f"result {code} {connection.result.get('description', '')}")
        return bool(connection.entries) or code == SIZE_LIMIT_EXCEEDED

    def _connection(self) -> ldap3.Connection:
        """An idle bound connection, else a new one to the first server that binds (fail-over in
        the configured order; each server's own time-outs bound the attempt)."""
        try:
            connection = self._idle.get_nowait()
        except queue.Empty:
            pass
        else:
            if not connection.closed:
                return connection
        settings = self.settings
        problems = []
        for server in self._build_servers():  # new each time: ldap3 remembers refused addresses
            try:
                return ldap3.Connection(
                    server,
                    user=settings.bind_dn or None,
                    password=self.password or None,
                    auto_bind=ldap3.AUTO_BIND_TLS_BEFORE_BIND if settings.start_tls else ldap3.AUTO_BIND_NO_TLS,
                    read_only=True,
                    receive_timeout=math.ceil(settings.timeout),  # ldap3 packs it as whole seconds
                )
            except Exception as exc:  # noqa: BLE001  # the next server, then unavailable
                problems.append(f"{server.name}: {exc}")
        raise LDAPException("; ".join(problems))

    def _build_servers(self) -> list[ldap3.Server]:
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=self.settings.ca_file or None)
        return [
            ldap3.Server(uri, tls=tls, get_info=ldap3.NONE, connect_timeout=self.settings.timeout)
            for uri in self.settings.servers
        ]

    def _drop_idle(self) -> None:
        while True:
            try:
                _unbind(self._idle.get_nowait())
            except queue.Empty:
                return


def _unbind(connection: ldap3.Connection) -> None:
    try:
        connection.unbind()
    except (LDAPException, OSError):
        pass
