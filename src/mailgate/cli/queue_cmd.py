"""`mailgate queue list|show|flush|retry|hold|release|delete|bounce|migrate` (and `mailq`).

Owns: the arguments and output of the queue commands. They go to a live server through its
control socket; when none answers, they open the store directly (the server is stopped), except
that a command that writes refuses (exit 1) while a live server holds the spool lock. With the
cluster queue (`[queue] backend = "postgresql"`) the store is the shared database: the commands
see and change every node's messages, need no local spool and no spool lock (every change is one
transaction; a node finishing a message an admin changed meanwhile is fenced, docs/cluster.md).
`migrate` brings the cluster queue's schema to this version (docs/cluster.md "Upgrades").
Must not: implement the operations (delivery/admin.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
import time
from functools import partial
from pathlib import Path
from typing import Any

from mailgate.cli.config_option import add_config_argument, load_config_or_report

EXAMPLES = """examples:
  mailgate queue list                          every message, like mailq
  mailgate queue list --state deferred --domain example.com --json
  mailgate queue show 01HF3K9Q2X
  mailgate queue hold --sender spammer@example.net --reason "investigating"
  mailgate queue release 01HF3K9Q2X
  mailgate queue flush                         retry everything now
  mailgate queue bounce --older-than 2d        fail them now, with a DSN to each sender
  mailgate queue migrate                       upgrade the cluster queue's database schema

exit codes: 0 success, 1 nothing matched or the operation failed, 2 usage error"""

SELECTING = ("hold", "release", "delete", "bounce")
# `queue list` asks for this many messages at a time and prints each page as it comes, so a queue
# of a million is listed in constant memory (keyset pages: QueueFilter.after); the first page is
# smaller, so the first lines come at once.
LIST_PAGE = 1000
LIST_FIRST_PAGE = 100
READ_ONLY = ("list", "show")  # safe on a spool a live server writes (SQLite readers do not block it)


def register(commands: argparse._SubParsersAction) -> None:
    queue = commands.add_parser(
        "queue", help="list and manage the queue", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_argument(queue)
    sub = queue.add_subparsers(dest="queue_command", metavar="ACTION")
    for name, text in (
        ("list", "list messages (filters below)"),
        ("show", "envelope, per-recipient state, last reply and headers of one message"),
        ("flush", "make every queued message due now"),
        ("retry", "make one message (or a selection) due now"),
        ("hold", "put messages on hold"),
        ("release", "release held messages"),
        ("delete", "delete messages (no DSN)"),
        ("bounce", "fail messages now and send a DSN to each sender"),
    ):
        parser = sub.add_parser(name, help=text)
        parser.add_argument("queue_id", nargs="?", help="one message's queue id")
        _add_filters(parser)
        parser.set_defaults(handler=queue_command, action=name)
    migrate = sub.add_parser("migrate", help="upgrade the cluster queue's database schema (backend postgresql)")
    add_config_argument(migrate, also_on_parent=True)
    migrate.set_defaults(handler=migrate_command)
    queue.set_defaults(handler=lambda args: queue.print_help() or 2)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser, also_on_parent=True)
    parser.add_argument("--sender", help="sender contains this text")
    parser.add_argument("--recipient", help="a recipient contains this text")
    parser.add_argument("--domain", help="a pending recipient is in this domain")
    parser.add_argument("--state", choices=("active", "queued", "deferred", "held"))
    parser.add_argument("--older-than", help="age at least this (e.g. 30m, 2d)")
    parser.add_argument("--younger-than", help="age at most this")
    parser.add_argument("--reason", default="", help="hold reason")
    parser.add_argument("--all", action="store_true", help="allow delete/bounce/hold without a filter")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _query(args: argparse.Namespace) -> dict[str, Any]:
    from mailgate.config.types import Duration

    query: dict[str, Any] = {}
    for name in ("queue_id", "sender", "recipient", "domain", "state"):
        if getattr(args, name, None):
            query[name] = getattr(args, name)
    for name in ("older_than", "younger_than"):
        if getattr(args, name, None):
            query[name] = Duration().convert(getattr(args, name))
    return query


def queue_command(args: argparse.Namespace) -> int:
    import asyncio

    try:
        query = _query(args)
    except ValueError as exc:
        print(f"mailgate queue: {exc}", file=sys.stderr)
        return 2
    config = load_config_or_report(args.config, "queue")
    if config is None:
        return 2
    if args.action in ("show", "retry") and not args.queue_id:
        print(f"mailgate queue {args.action}: a queue id is required", file=sys.stderr)
        return 2
    if args.action in SELECTING and not query and not args.all:
        print(f"mailgate queue {args.action}: give a queue id or a filter (or --all)", file=sys.stderr)
        return 2
    shared = config.queue.backend == "postgresql"
    problem = None if shared else spool_problem(config.server.spool_dir)
    if problem is not None:
        print(f"mailgate queue: server.spool_dir {config.server.spool_dir}: {problem}", file=sys.stderr)
        return 2
    from mailgate.startup_errors import StartupError

    try:
        if args.action == "list":
            return asyncio.run(_list(config, query, args.json))
        result = asyncio.run(_run(config, args.action, query, args.reason))
    except StartupError as exc:  # the cluster queue's database: one line naming the key
        print(f"mailgate queue: {exc}", file=sys.stderr)
        return 2
    if "error" in result:
        print(f"mailgate queue {args.action}: {result['error']}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    return _print(args.action, result)


def migrate_command(args: argparse.Namespace) -> int:
    import asyncio

    config = load_config_or_report(args.config, "queue migrate")
    if config is None:
        return 2
    if config.queue.backend != "postgresql":
        print("mailgate queue migrate: the SQLite queue upgrades itself at start; nothing to do")
        return 0
    from mailgate.queue_config import queue_password, queue_problems
    from mailgate.queue.postgres_store import migrate_database
    from mailgate.queue.store import QueueUnavailableError

    problems = queue_problems(config)
    if problems:
        for line in problems:
            print(f"mailgate queue migrate: {line}", file=sys.stderr)
        return 2
    try:
        before, after = asyncio.run(migrate_database(config.queue.dsn, queue_password(config)))
    except QueueUnavailableError as exc:
        print(f"mailgate queue migrate: queue.dsn: {exc}", file=sys.stderr)
        return 2
    print(f"queue schema: version {before} -> {after}" if before != after else f"queue schema: version {after}, up to date")
    return 0


def spool_problem(spool_dir: str) -> str | None:
    """Why the queue commands cannot use this spool, in one line with the fix; None when they can.
    They never create a spool (issue 20 item 6): an admin who ran them in the wrong folder or with
    the wrong --config learns it instead of seeing an empty queue."""
    from mailgate.queue.spool_names import DATABASE_NAME

    path = Path(spool_dir)
    if not path.exists():
        return "no such directory (nothing was created); give the server's --config"
    if not path.is_dir():
        return "not a directory; set server.spool_dir to the server's spool directory"
    if not os.access(path, os.R_OK | os.X_OK) or (
            (path / DATABASE_NAME).exists() and not os.access(path / DATABASE_NAME, os.R_OK)):
        return "permission denied; run as root or as the service user (server.user)"
    if not (path / DATABASE_NAME).exists():
        return f"holds no queue ({DATABASE_NAME}); the server has never run on it, or --config names another server"
    return None


async def _run(config, action: str, query: dict, reason: str) -> dict:
    async with _admin_channel(config, action) as run:
        return await run(action, query, reason)


@contextlib.asynccontextmanager
async def _admin_channel(config, action: str):
    """A function running one admin operation: through the live server's control socket, or on
    the store itself when no server answers (opened once, for every call made through it)."""
    from mailgate.queue_config import control_socket_path
    from mailgate.server import control

    socket_path = control_socket_path(config)
    try:
        await control.request(socket_path, "list", {"limit": 0})  # does a live server answer?
    except OSError:
        pass  # no live server answers: work on the store directly
    else:
        yield partial(control.request, socket_path)
        return
    from mailgate.offline_queue import open_offline_admin
    from mailgate.queue.spool_lock import spool_holder

    shared = config.queue.backend == "postgresql"  # transactions and fencing, no spool lock
    holder = spool_holder(config.server.spool_dir) if action not in READ_ONLY and not shared else None
    if holder is not None:
        # Issue 13 item 3: writing behind a live server's back would race its delivery.
        async def refuse(*_: Any) -> dict:
            return {"error": f"{holder} whose control socket {socket_path} does not answer; "
                             "use that server's --config, or stop it first"}

        yield refuse
        return
    admin, close = await open_offline_admin(config)
    try:
        yield admin.run
    finally:
        await close()


async def _list(config, query: dict, as_json: bool) -> int:
    """Print the matching messages page by page as they come (LIST_PAGE at a time)."""
    listed = 0
    async with _admin_channel(config, "list") as run:
        page_query = {**query, "limit": LIST_FIRST_PAGE}
        while True:
            result = await run("list", page_query, "")
            if "error" in result:
                if as_json and listed:
                    print("\n  ]\n}")
                print(f"mailgate queue list: {result['error']}", file=sys.stderr)
                return 1
            rows = result["messages"]
            _print_list_page(rows, listed, as_json)
            listed += len(rows)
            if len(rows) < page_query["limit"]:
                break
            page_query["after"] = [rows[-1]["created"], rows[-1]["queue_id"]]
            page_query["limit"] = LIST_PAGE
    if as_json:
        print("\n  ]\n}" if listed else '{\n  "messages": []\n}')
    elif listed:
        print(f"-- {listed} message(s)")
    else:
        print("Mail queue is empty")
    return 0


def _print_list_page(rows: list[dict], listed_before: int, as_json: bool) -> None:
    """One page of `queue list`; the JSON is one document, {"messages": [...]}, written in parts."""
    for number, row in enumerate(rows, start=listed_before):
        if as_json:
            start = '{\n  "messages": [\n' if number == 0 else ",\n"
            item = textwrap.indent(json.dumps(row, indent=2, default=str), "    ")
            print(start + item, end="")
            continue
        if number == 0:
            print(f"{'Queue ID':<22} {'Size':>9} {'Arrived':<19} {'State':<9} Sender / Recipients")
        arrived = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["created"]))
        print(f"{row['queue_id']:<22} {row['size']:>9} {arrived:<19} {row['state']:<9} <{row['sender']}>")
        if row.get("hold_reason"):
            print(f"{'':62}held: {row['hold_reason']}")
        for recipient in row["recipients"]:
            reply = f"  ({recipient['last_reply']})" if recipient["last_reply"] else ""
            print(f"{'':62}{recipient['address']} [{recipient['state']}]{reply}")
    sys.stdout.flush()


def _print(action: str, result: dict) -> int:
    if action == "show":
        message = result["message"]
        if message is None:
            print("no such message", file=sys.stderr)
            return 1
        for key in ("queue_id", "sender", "size", "held", "hold_reason", "client", "helo", "auth_user", "direction"):
            print(f"{key}: {message[key]}")
        print(f"created: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(message['created']))}")
        for r in message["recipients"]:
            print(f"recipient: {r['address']} state={r['state']} attempts={r['attempts']} last={r['last_reply']}")
        print()
        print(message["headers"])
        return 0
    ids = result["ids"]
    print(f"{action}: {len(ids)} message(s)" + (": " + " ".join(ids) if ids else ""))
    return 0 if ids else 1
