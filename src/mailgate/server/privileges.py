"""Bind privileged ports as root, then run as an unprivileged user and group (SPEC §8).

Owns: binding a listening socket before privileges are dropped (`bind_listener_socket`; the
listener then accepts on it (acceptor.py) and keeps it bound for the life of the process,
since an unprivileged process could not bind port 25 again), resolving
the configured user and group (`resolve_identity`), dropping to them for good
(`drop_privileges`: supplementary groups, then gid, then uid, real, effective and saved alike,
and a check that root cannot be regained), and checking before the drop that the spool will be
usable afterwards (`spool_ownership_problems`).
Must not: read configuration, start the event loop's work, or change ownership of anything: a
wrongly owned spool is reported for the admin to fix, never "repaired" behind their back.

Order (the composition root): bind every listener socket, check the spool, drop privileges, and
only then open the store and start threads, so that nothing runs as root that need not. Certificate
keys are read again on SIGHUP, after the drop: they must be readable by the service's group.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

# What the SQLite store keeps in the spool (queue/sqlite_store.py); each must stay writable.
SPOOL_ENTRIES = ("queue.db", "queue.db-wal", "queue.db-shm", "incoming")


class PrivilegeError(Exception):
    """Privileges cannot be dropped as configured; the message says why, for the admin."""


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, the primary one included


def bind_listener_socket(
    host: str, port: int, backlog: int = 4096, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """A bound, listening, non-blocking TCP socket; IPv6 wildcards accept IPv6 only (bind
    `0.0.0.0` as well for IPv4), so both families behave the same on every system.
    `reuse_port`: SO_REUSEPORT, for several worker processes each binding the same port.
    `listen=False`: bound only (the port is reserved, no connection is queued to it yet)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def resolve_identity(user: str, group: str = "") -> Identity:
    """The uid, gid and supplementary groups of `user`; `group` empty means the user's own."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"server.user: no such user {user!r}") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"server.group: no such group {group!r}") from None
    groups = tuple(sorted(set(os.getgrouplist(user, gid))))
    return Identity(user, entry.pw_uid, gid, groups)


def drop_privileges(identity: Identity) -> None:
    """Become `identity` for good. Not root: fine if we already are it, else PrivilegeError."""
    if os.geteuid() != 0:
        if (os.getuid(), os.geteuid()) == (identity.uid, identity.uid) and os.getegid() == identity.gid:
            return
        raise PrivilegeError(
            f"server.user: running as uid {os.geteuid()}, cannot switch to {identity.user!r} "
            "without starting as root"
        )
    if identity.uid == 0:
        raise PrivilegeError("server.user: refusing to run as root; name an unprivileged user")
    # Groups first: once the uid is dropped, the process may no longer change them.
    os.setgroups(list(identity.groups))
    os.setresgid(identity.gid, identity.gid, identity.gid)
    os.setresuid(identity.uid, identity.uid, identity.uid)
    if _can_regain_root():
        raise PrivilegeError("privileges were not dropped: root can be regained")
    os.umask(0o027)  # queue files: no access for others


def _can_regain_root() -> bool:
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True


def spool_ownership_problems(spool_dir: str | Path, identity: Identity) -> list[str]:
    """What would stop `identity` from using the spool; empty when all is well.

    The usual case: mailgate was run once as root, so `queue.db` belongs to root and the
    service, running as its own user, could no longer write it.
    """
    spool = Path(spool_dir)
    problems = []
    try:
        info = spool.stat()
    except FileNotFoundError:
        return [f"server.spool_dir: {spool} does not exist (create it owned by {identity.user})"]
    if not stat.S_ISDIR(info.st_mode):
        return [f"server.spool_dir: {spool} is not a directory"]
    if info.st_uid != identity.uid:
        problems.append(f"server.spool_dir: {spool} is owned by uid {info.st_uid}, not by {identity.user}")
    if info.st_mode & stat.S_IWOTH:
        problems.append(f"server.spool_dir: {spool} is writable by everyone")
    for name in SPOOL_ENTRIES:
        path = spool / name
        if path.exists() and path.stat().st_uid != identity.uid:
            problems.append(f"server.spool_dir: {path} is owned by uid {path.stat().st_uid}, not by {identity.user}")
    return problems
