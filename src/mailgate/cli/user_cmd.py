"""`mailgate user add|passwd|delete|list`: manage the AUTH users file.

Owns: the argparse sub-commands and their handlers, each `(args) -> int` exit code: 0 done,
1 the user exists / does not exist / the file is unusable, 2 usage (bad name, bad sender entry,
empty or mismatched password, no users file given).
Must not: parse the main configuration (the caller passes the users file path) or print secrets.

Passwords never come from argv (visible in `ps` and shell history): from a terminal they are
asked twice with `getpass`; otherwise one line is read from standard input, for scripts:
    printf '%s\\n' "$PASSWORD" | mailgate user add alice@example.org
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable

from mailgate.auth.store import FileUserStore, UserStoreError

EXIT_OK = 0
EXIT_USER = 1
EXIT_USAGE = 2


class UsageError(Exception):
    pass


def register(
    subparsers: argparse._SubParsersAction, *, default_users_file: str | None = None
) -> argparse.ArgumentParser:
    """Add `user` and its actions; each action parser sets `args.handler`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--users-file", metavar="PATH", default=default_users_file,
                        help="the users file (default: auth.users_file from the configuration)")
    user = subparsers.add_parser("user", help="manage users allowed to AUTH")
    actions = user.add_subparsers(dest="user_action", metavar="ACTION", required=True)

    add = actions.add_parser("add", parents=[common], help="add a user (password from tty or stdin)")
    add.add_argument("name")
    add.add_argument("--allow-sender", action="append", default=[], metavar="ADDRESS|@DOMAIN|<>",
                     help="a sender address, whole domain or <> the user owns besides its login "
                          "name; repeatable, comma-separated lists allowed; enforced under "
                          "relay.restrict_auth_senders")
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
    def action(store: FileUserStore) -> None:
        senders = [item for entry in args.allow_sender for item in entry.split(",") if item.strip()]
        store.add(args.name, read_password(confirm=True), senders)
        _say(f"user {args.name.lower()} added")

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
    def action(store: FileUserStore) -> None:
        for name, senders in store.list():
            print(f"{name}\t{','.join(senders) if senders else '(login name only)'}", file=sys.stdout)

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
    users_file = getattr(args, "users_file", None)
    if not users_file:
        return _fail("no users file: pass --users-file PATH or set it in the configuration", EXIT_USAGE)
    try:
        action(FileUserStore(users_file))
    except (UsageError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (UserStoreError, OSError) as exc:  # exists, unknown, unreadable or malformed file
        return _fail(str(exc), EXIT_USER)
    return EXIT_OK


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _fail(message: str, code: int) -> int:
    print(f"mailgate user: {message}", file=sys.stderr)
    return code
