"""`mailgate user add|passwd|delete|list`: manage the AUTH users file (and console admins).

Owns: the argparse sub-commands and their handlers, each `(args) -> int` exit code: 0 done,
1 the user exists / does not exist / the file is unusable, 2 usage or configuration error (bad
name, bad sender entry, empty or mismatched password, a configuration that does not load).
The users file is --users-file, else `server.users_file` of the configuration (--config).
A users file root creates is made readable by the service user: owned by `server.user` when
that is set, else group-readable by the group of its folder (/etc/mailgate is root:mailgate in
docs/operations.md); when neither says who, the command prints the chgrp/chmod to run.
Must not: validate the configuration (config/ does) or print secrets.

Passwords never come from argv (visible in `ps` and shell history): from a terminal they are
asked twice with `getpass`; otherwise one line is read from standard input, for scripts:
    printf '%s\\n' "$PASSWORD" | mailgate user add alice@example.org
"""

from __future__ import annotations

import argparse
import getpass
import grp
import os
import pwd
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mailgate.cli.config_option import add_config_argument, load_config_or_report

if TYPE_CHECKING:  # the store (argon2) is imported when a command runs, not at every start
    from mailgate.auth.store import FileOwner, FileUserStore

EXIT_OK = 0
EXIT_USER = 1
EXIT_USAGE = 2


class UsageError(Exception):
    pass


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `user` and its actions; each action parser sets `args.handler`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--users-file", metavar="PATH",
                        help="the users file (default: server.users_file of the configuration)")
    add_config_argument(common)
    user = subparsers.add_parser("user", help="manage users allowed to AUTH")
    actions = user.add_subparsers(dest="user_action", metavar="ACTION", required=True)

    add = actions.add_parser("add", parents=[common], help="add a user (password from tty or stdin)")
    add.add_argument("name")
    add.add_argument("--allow-sender", action="append", default=[], metavar="ADDRESS|@DOMAIN|<>",
                     help="a sender address, whole domain or <> the user owns besides its login "
                          "name; repeatable, comma-separated lists allowed; enforced under "
                          "relay.restrict_auth_senders")
    add.add_argument("--admin", action="store_true",
                     help="the user may also log in to the web console (docs/console.md)")
    add.set_defaults(handler=handle_add)

    passwd = actions.add_parser("passwd", parents=[common], help="set a user's password")
    passwd.add_argument("name")
    passwd.set_defaults(handler=handle_passwd)

    delete = actions.add_parser("delete", parents=[common], help="remove a user")
    delete.add_argument("name")
    delete.set_defaults(handler=handle_delete)

    listing = actions.add_parser("list", parents=[common], help="list users and their senders")
    listing.set_defaults(handler=handle_list)
    return user


def handle_add(args: argparse.Namespace) -> int:
    from mailgate.auth.store import ADMIN_ROLE

    def action(store: FileUserStore) -> None:
        senders = [item for entry in args.allow_sender for item in entry.split(",") if item.strip()]
        store.add(args.name, read_password(confirm=True), senders, roles=(ADMIN_ROLE,) if args.admin else ())
        _say(f"{'admin' if args.admin else 'user'} {args.name.lower()} added")

    return _run(args, action)


def handle_passwd(args: argparse.Namespace) -> int:
    def action(store: FileUserStore) -> None:
        store.set_password(args.name, read_password(confirm=True))
        _say(f"password of {args.name.lower()} changed")

    return _run(args, action)


def handle_delete(args: argparse.Namespace) -> int:
    def action(store: FileUserStore) -> None:
        store.delete(args.name)
        _say(f"user {args.name.lower()} deleted")

    return _run(args, action)


def handle_list(args: argparse.Namespace) -> int:
    from mailgate.auth.store import ADMIN_ROLE

    def action(store: FileUserStore) -> None:
        for name, senders in store.list():
            role = "\tadmin" if store.has_role(name, ADMIN_ROLE) else ""
            print(f"{name}\t{','.join(senders) if senders else '(login name only)'}{role}", file=sys.stdout)

    return _run(args, action)


def read_password(*, confirm: bool) -> str:
    """From a terminal: getpass (twice when `confirm`); otherwise one line of standard input."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Repeat password: ") != password:
            raise UsageError("passwords do not match")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("empty password")
    return password


def _run(args: argparse.Namespace, action: Callable[[FileUserStore], None]) -> int:
    """Open the store, run the action and map its errors onto the exit codes."""
    from mailgate.auth.store import FileUserStore, UserStoreError
    from mailgate.server.privileges import PrivilegeError

    config = load_config_or_report(args.config, "user")
    if config is None:
        return EXIT_USAGE
    users_file = Path(args.users_file or config.server.users_file)
    existed = users_file.exists()
    try:
        if args.user_action == "add":  # the embedded default's ./var before the first `serve`
            users_file.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        owner = _new_file_owner(users_file, config.server.user, config.server.group)
        action(FileUserStore(users_file, new_file_owner=owner))
    except (UsageError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (UserStoreError, OSError) as exc:  # exists, unknown, unreadable or malformed file
        return _fail(str(exc), EXIT_USER)
    except PrivilegeError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if not existed and users_file.exists():
        _say_who_reads(users_file)
    return EXIT_OK


def _new_file_owner(users_file: Path, user: str, group: str) -> FileOwner | None:
    """Who must read a users file root creates: `server.user`, else its folder's group."""
    from mailgate.auth.store import FILE_MODE, GROUP_READ_MODE, FileOwner
    from mailgate.server.privileges import resolve_identity

    if os.geteuid() != 0:
        return None  # the file belongs to whoever runs the command, as the server does
    if user:
        identity = resolve_identity(user, group)
        return FileOwner(identity.uid, identity.gid, FILE_MODE)
    folder_group = users_file.parent.stat().st_gid
    return FileOwner(0, folder_group, GROUP_READ_MODE) if folder_group != 0 else None


def _say_who_reads(users_file: Path) -> None:
    info = users_file.stat()
    owner, group = _name_of_user(info.st_uid), _name_of_group(info.st_gid)
    _say(f"created {users_file} ({owner}:{group}, mode {info.st_mode & 0o777:04o})")
    if os.geteuid() == 0 and (info.st_uid, info.st_gid) == (0, 0):
        _say(f"only root can read it; for the service user run: chgrp mailgate {users_file} && "
             f"chmod 0640 {users_file}  (or set server.user)")


def _name_of_user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _name_of_group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _fail(message: str, code: int) -> int:
    print(f"mailgate user: {message}", file=sys.stderr)
    return code
