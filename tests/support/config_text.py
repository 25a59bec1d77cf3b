"""Configuration files for test servers: the sections nearly all of them share, written once.

Owns: `relay_config`, the text of a [server] with its spool and users file, one plain-text
[[listener]] named "mx" on loopback, a [relay] that trusts 127.0.0.1, and then the test's own
sections; `hosted_domain`, one [[domain]] table; `loopback_dns`, the [dns] section of a test
nameserver. Each key is written `key = value` on its own line, so a test may still `.replace()`
one. Must not: hide what a test is about: the keys a test checks stay in its own text.
"""

from __future__ import annotations

from pathlib import Path


def relay_config(
    spool_dir: Path, port: int, *sections: str, hostname: str = "mx.test", server: str = "", listener: str = "",
    trust_loopback: bool = True,
) -> str:
    """`server` and `listener`: more lines for those tables; `sections`: the rest, in order.
    The users file sits beside the spool."""
    relay = '[relay]\ntrusted_networks = ["127.0.0.1/32"]\n' if trust_loopback else ""
    return "\n".join([
        f'[server]\nhostname = "{hostname}"\nspool_dir = "{spool_dir}"\nusers_file = "{spool_dir.parent / "users"}"\n'
        + server,
        f'[[listener]]\nname = "mx"\naddress = "127.0.0.1:{port}"\ntls = "none"\n' + listener,
        relay,
        *sections,
    ])


def hosted_domain(next_hop: str, name: str = "hosted.test", extra: str = "") -> str:
    return f'[[domain]]\nname = "{name}"\nnext_hop = ["{next_hop}"]\n{extra}'


def loopback_dns(port: int) -> str:
    """The nameserver of tests/support/dns_server.py on 127.0.0.1:`port`, with a short time-out."""
    return f'[dns]\nnameservers = ["127.0.0.1"]\nport = {port}\ntimeout = 2\n'


def log_and_metrics(workdir: Path, metrics_port: int) -> str:
    """Both transaction logs under `workdir` (log/tx.jsonl, w3c/) and /metrics on loopback."""
    return (f'[log]\njson_file = "{workdir / "log" / "tx.jsonl"}"\nw3c_dir = "{workdir / "w3c"}"\n\n'
            f'[metrics]\naddress = "127.0.0.1:{metrics_port}"\n')
