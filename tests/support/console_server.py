"""What the web console tests set up before they log in: an admin in the users file, and the
configuration of a mailgate that serves the console.

Owns: `add_admin` (a user with the admin role, hashed cheaply: these tests measure behaviour, not
the hash's cost) and `console_config` (tests/support/config_text.py's relay configuration with a
hosted domain whose next hop refuses connections, so mail stays queued, the JSON transaction log,
and the console on loopback). Must not: start a server or log in (mailgate_server.py and
console_client.py do that), nor check anything.
"""

from __future__ import annotations

from pathlib import Path

from argon2 import PasswordHasher

from mailgate.auth.store import FileUserStore
from tests.conftest import free_port
from tests.support.config_text import console, hosted_domain, relay_config

CHEAP = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)


def add_admin(users_file: Path, name: str, password: str) -> FileUserStore:
    """Adds `name` with the admin role; the store, for more users."""
    users = FileUserStore(users_file, hasher=CHEAP)
    users.add(name, password, roles=("admin",))
    return users


def console_config(
    workdir: Path, console_port: int, smtp_port: int, *sections: str, hostname: str = "mx.test",
    domain: str = "hosted.test", console_extra: str = "",
) -> str:
    """Spool and users file in `workdir`; `sections` come after the hosted domain;
    `console_extra`: more lines for [console]."""
    return relay_config(
        workdir / "spool", smtp_port,
        hosted_domain(f"127.0.0.1:{free_port()}", domain), *sections,
        f'[log]\njson_file = "{workdir}/log/transactions.jsonl"\n',
        console(console_port, console_extra),
        hostname=hostname, server="self_audit = false\n",
    )
