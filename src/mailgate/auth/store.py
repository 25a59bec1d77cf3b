"""The user store for SMTP AUTH: who may authenticate, and which sender addresses each may use.

Owns: the `UserStore` protocol the server and policy call, and `FileUserStore`, one text file of
argon2id hashes (SPEC R4) written atomically (temporary file, fsync, rename, fsync of the
directory) with mode 0600 (0640 when a group must read it), shared safely by the server and the
`mailgate user` command. Root's edits keep the file's owner and mode; a file root creates gets the
`new_file_owner` given (the service user must read it).
Must not: speak SASL (smtp/ does), decide relaying (policy/ does), or count failures (lockout.py).

File format, one user a line; `#` comments and blank lines are ignored:
    name:$argon2id$v=19$m=65536,t=3,p=4$salt$hash:alice@example.org,@example.org
    admin:$argon2id$...:admin@example.org:admin
The third field lists the sender addresses the user owns: full addresses, "@domain" for a whole
domain, "<>" for the null sender. What owning means (and what an empty list owns) is documented
once, at the `relay.restrict_auth_senders` key. Domains are stored IDNA-normalised. An optional
fourth field lists roles: `admin` may log in to the web console (console/); a line without it
is a plain AUTH user, so files written before roles existed read as before.

User names are compared case-insensitively (stored in lower case): names are usually mail
addresses, whose domain part is case-insensitive and whose users type them in any case.

Hashing: argon2-cffi's `PasswordHasher` defaults (argon2id, RFC 9106 §4 second recommended
option: t=3, m=64 MiB, p=4). A hash made with other parameters is re-made on the next successful
verify. `verify` takes a tenth of a second or more on purpose: the server must call it through
`asyncio.to_thread`. An unknown user is checked against a dummy hash, so the time taken does not
tell which user names exist.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from mailgate.core.address import AddressError, normalise_domain, parse_mailbox

log = logging.getLogger(__name__)

# RFC 5321 §4.5.3.1.3: a path holds at most 256 octets, so a mailbox-like name fits in 254.
MAX_USER_NAME = 254
_FORBIDDEN_IN_NAME = frozenset(":,")
FILE_MODE = 0o600
_HEADER = "# mailgate users: name:argon2id-hash:allowed-senders (comma-separated; see relay.restrict_auth_senders)\n"
NULL_SENDER_ENTRY = "<>"  # an allowed-senders entry owning the null reverse-path (RFC 5321 §4.5.5)
GROUP_READ_MODE = 0o640  # the most any users file may allow: never readable by others
ADMIN_ROLE = "admin"  # may log in to the web console
ROLES = frozenset({ADMIN_ROLE})


class UserStoreError(Exception):
    """The store cannot do what was asked; the message is fit for an admin."""


class UserExistsError(UserStoreError):
    pass


class UnknownUserError(UserStoreError):
    pass


class UserFileError(UserStoreError):
    """The users file is malformed; names the file and line."""


class UserStore(Protocol):
    def verify(self, user: str, password: str) -> bool:
        """True when the password is the user's. Slow (argon2): call via asyncio.to_thread."""

    def allowed_senders(self, user: str) -> tuple[str, ...]:
        """The user's allowed-senders entries: addresses, "@domain", "<>"."""


@dataclass(frozen=True, slots=True)
class FileOwner:
    """Owner, group and mode of a users file root creates for the service user."""

    uid: int
    gid: int
    mode: int


@dataclass(frozen=True, slots=True)
class UserRecord:
    name: str
    password_hash: str
    allowed_senders: tuple[str, ...]
    roles: tuple[str, ...] = ()


def normalise_user_name(name: str) -> str:
    """The stored form of a user name (lower case); ValueError when it cannot be stored."""
    if not name or len(name) > MAX_USER_NAME:
        raise ValueError(f"user name must be 1 to {MAX_USER_NAME} characters")
    if name.startswith("#") or any(char in _FORBIDDEN_IN_NAME for char in name):
        raise ValueError("user name must not start with '#' nor contain ':' or ','")
    if any(not char.isprintable() or char.isspace() for char in name):
        raise ValueError("user name must not contain spaces or control characters")
    return name.lower()


def normalise_sender_entry(entry: str) -> str:
    """An allowed-sender entry: "<>", "@domain" or a mailbox, domain normalised; ValueError if bad."""
    entry = entry.strip()
    if entry == NULL_SENDER_ENTRY:
        return entry
    try:
        if entry.startswith("@"):
            return "@" + normalise_domain(entry[1:])
        mailbox = str(parse_mailbox(entry, smtputf8=True))
    except AddressError as exc:
        raise ValueError(f"bad allowed sender {entry!r}: {exc}") from None
    if "," in mailbox or ":" in mailbox or any(char.isspace() for char in mailbox):
        raise ValueError(f"allowed sender {entry!r} cannot be stored (comma, colon or space)")
    return mailbox


class FileUserStore:
    """`UserStore` backed by one file; safe to share between threads and processes.

    Every change takes an exclusive lock on `<path>.lock`, re-reads the file, changes it and
    writes it atomically, so the server's rehash and the CLI never lose each other's updates.
    Reads pick up a changed file by itself (size, mtime and inode are checked on each call).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, hasher: PasswordHasher | None = None,
        new_file_owner: FileOwner | None = None,
    ) -> None:
        self.path = Path(path)
        self._new_file_owner = new_file_owner
        self._hasher = hasher or PasswordHasher()
        self._lock = threading.RLock()
        self._users: dict[str, UserRecord] = {}
        self._fingerprint: tuple[int, int, int] | None = None
        self._dummy_hash: str | None = None
        self.reload()

    # --- UserStore -------------------------------------------------------------------------------

    def verify(self, user: str, password: str) -> bool:
        record = self._lookup(user)
        if record is None:
            self._burn_time(password)
            return False
        try:
            self._hasher.verify(record.password_hash, password)
        except (VerificationError, InvalidHashError):
            return False
        if self._hasher.check_needs_rehash(record.password_hash):
            self._rehash(record, password)
        return True

    def allowed_senders(self, user: str) -> tuple[str, ...]:
        record = self._lookup(user)
        return record.allowed_senders if record else ()

    # --- Administration (mailgate user ...) ------------------------------------------------------

    def add(
        self, user: str, password: str, allowed_senders: tuple[str, ...] | list[str] = (),
        roles: tuple[str, ...] = (),
    ) -> None:
        name = normalise_user_name(user)
        senders = tuple(normalise_sender_entry(entry) for entry in allowed_senders)
        roles = _checked_roles(roles)
        password_hash = self._hash(password)
        with self._mutating() as users:
            if name in users:
                raise UserExistsError(f"user {name} already exists")
            users[name] = UserRecord(name, password_hash, senders, roles)

    def has_role(self, user: str, role: str) -> bool:
        record = self._lookup(user)
        return record is not None and role in record.roles

    def set_password(self, user: str, password: str) -> None:
        name = normalise_user_name(user)
        password_hash = self._hash(password)
        with self._mutating() as users:
            if name not in users:
                raise UnknownUserError(f"no user {name}")
            users[name] = replace(users[name], password_hash=password_hash)

    def delete(self, user: str) -> None:
        name = normalise_user_name(user)
        with self._mutating() as users:
            if users.pop(name, None) is None:
                raise UnknownUserError(f"no user {name}")

    def list(self) -> list[tuple[str, tuple[str, ...]]]:
        with self._lock:
            self._refresh_if_changed()
            return [(name, self._users[name].allowed_senders) for name in sorted(self._users)]

    def reload(self) -> None:
        """Read the file again (SIGHUP); a missing file is an empty store.

        Raises UserFileError for a malformed file, keeping the users already loaded.
        """
        with self._lock:
            self._users, self._fingerprint = self._read()

    # --- Internals -------------------------------------------------------------------------------

    def _lookup(self, user: str) -> UserRecord | None:
        try:
            name = normalise_user_name(user)
        except ValueError:
            return None
        with self._lock:
            self._refresh_if_changed()
            return self._users.get(name)

    def _hash(self, password: str) -> str:
        if not password:
            raise ValueError("empty password")
        return self._hasher.hash(password)

    def _burn_time(self, password: str) -> None:
        """Spend what a real verify costs, so unknown names are not told apart by time."""
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash("mailgate-no-such-user")
        try:
            self._hasher.verify(self._dummy_hash, password)
        except VerificationError:
            pass

    def _rehash(self, record: UserRecord, password: str) -> None:
        new_hash = self._hasher.hash(password)
        try:
            with self._mutating() as users:
                current = users.get(record.name)
                # Only if nobody changed the password since we read it.
                if current is not None and current.password_hash == record.password_hash:
                    users[record.name] = replace(current, password_hash=new_hash)
        except (OSError, UserStoreError) as exc:
            log.warning("could not store the new password hash of %s: %s", record.name, exc)

    def _refresh_if_changed(self) -> None:
        """Pick up an edited file; a broken edit keeps the users we had (like a failed reload)."""
        fingerprint = _fingerprint(self.path)
        if fingerprint == self._fingerprint:
            return
        try:
            self._users, self._fingerprint = self._read()
        except UserFileError as exc:
            log.error("users file not reloaded, keeping the previous users: %s", exc)
            self._fingerprint = fingerprint  # do not parse the same broken file on every call

    @contextmanager
    def _mutating(self) -> Iterator[dict[str, UserRecord]]:
        """Lock (thread and file), read the latest file, let the caller change it, write it."""
        with self._lock, _file_lock(self.path.with_name(self.path.name + ".lock")):
            users, _ = self._read()
            yield users
            _write_atomically(self.path, _render(users), self._new_file_owner)
            self._users, self._fingerprint = users, _fingerprint(self.path)

    def _read(self) -> tuple[dict[str, UserRecord], tuple[int, int, int] | None]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                fingerprint = _fingerprint_of(os.fstat(handle.fileno()))
                text = handle.read()
        except FileNotFoundError:
            return {}, None
        return _parse(text, self.path), fingerprint


def _parse(text: str, path: Path) -> dict[str, UserRecord]:
    users: dict[str, UserRecord] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":", 2)
        if len(fields) != 3 or not fields[1].startswith("$argon2"):
            raise UserFileError(f"{path}:{number}: expected name:argon2-hash:allowed-senders[:roles]")
        senders_field, _, roles_field = fields[2].partition(":")
        try:
            name = normalise_user_name(fields[0])
            senders = tuple(normalise_sender_entry(item) for item in senders_field.split(",") if item.strip())
            roles = _checked_roles(item.strip() for item in roles_field.split(",") if item.strip())
        except ValueError as exc:
            raise UserFileError(f"{path}:{number}: {exc}") from None
        if name in users:
            raise UserFileError(f"{path}:{number}: user {name} is listed twice")
        users[name] = UserRecord(name, fields[1], senders, roles)
    return users


def _checked_roles(roles) -> tuple[str, ...]:
    checked = tuple(sorted(set(roles)))
    unknown = [role for role in checked if role not in ROLES]
    if unknown:
        raise ValueError(f"unknown role {unknown[0]!r} (known: {', '.join(sorted(ROLES))})")
    return checked


def _render(users: dict[str, UserRecord]) -> str:
    lines = [f"{name}:{users[name].password_hash}:{','.join(users[name].allowed_senders)}"
             + (f":{','.join(users[name].roles)}" if users[name].roles else "") + "\n"
             for name in sorted(users)]
    return _HEADER + "".join(lines)


def _fingerprint_of(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    try:
        return _fingerprint_of(os.stat(path))
    except FileNotFoundError:
        return None


@contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the flock


def _write_atomically(path: Path, text: str, new_file_owner: FileOwner | None) -> None:
    """tmp + fsync + rename + fsync(dir): the file is always the old or the new one, never half."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _keep_owner(descriptor, path, new_file_owner)
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _keep_owner(descriptor: int, path: Path, new_file_owner: FileOwner | None) -> None:
    """The file's mode, and when root edits it its owner, stay what they were, so the service
    user can still read it; a new file root creates gets `new_file_owner`."""
    try:
        stat = os.stat(path)
        owner = FileOwner(stat.st_uid, stat.st_gid, stat.st_mode & GROUP_READ_MODE)
    except FileNotFoundError:
        owner = new_file_owner if new_file_owner is not None and os.geteuid() == 0 else None
    os.fchmod(descriptor, owner.mode & GROUP_READ_MODE if owner else FILE_MODE)
    if owner is not None and os.geteuid() == 0 and (owner.uid, owner.gid) != (0, 0):
        os.fchown(descriptor, owner.uid, owner.gid)
