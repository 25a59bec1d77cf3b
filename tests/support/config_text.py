"""Configuration files for test servers: the sections nearly all of them share, written once.

Owns: `relay_config`, the text of a [server] with its spool and users file, one plain-text
[[listener]] named "mx" on loopback, a [relay] that trusts 127.0.0.1, and then the test's own
sections; `hosted_domain`, one [[domain]] table; `smtps_listener`, a [[listener]] with implicit
TLS; `loopback_dns`, the [dns] section of a test nameserver; `cluster_queue`, the [queue] section
of a PostgreSQL queue; `console`, the [console] section of a web console on loopback. Each key is
written `key = value` on its own line, so a test may still `.replace()` one.
Must not: hide what a test is about: the keys a test checks stay in its own text.
"""

from __future__ import annotations

from pathlib import Path

# For `server`: a supervisor with two worker processes, and the start-up self-audit off.
TWO_WORKERS = "workers = 2\nself_audit = false\n"


def relay_config(
    spool_dir: Path, port: int, *sections: str, hostname: str = "mx.test", server: str = "", listener: str = "",
    trust_loopback: bool = True, host: str = "127.0.0.1",
) -> str:
    """`server` and `listener`: more lines for those tables; `sections`: the rest, in order.
    The users file sits beside the spool; the listener is on `host`:`port`."""
    relay = '[relay]\ntrusted_networks = ["127.0.0.1/32"]\n' if trust_loopback else ""
    return "\n".join([
        f'[server]\nhostname = "{hostname}"\nspool_dir = "{spool_dir}"\nusers_file = "{spool_dir.parent / "users"}"\n'
        + server,
        f'[[listener]]\nname = "mx"\naddress = "{host}:{port}"\ntls = "none"\n' + listener,
        relay,
        *sections,
    ])


def hosted_domain(next_hop: str, name: str = "hosted.test", extra: str = "") -> str:
    return f'[[domain]]\nname = "{name}"\nnext_hop = ["{next_hop}"]\n{extra}'


def smtps_listener(name: str, port: int, cert_file: str | Path, key_file: str | Path, extra: str = "") -> str:
    """A [[listener]] with implicit TLS (profile smtps) on 127.0.0.1:`port`; `extra`: more lines for it."""
    return (f'[[listener]]\nname = "{name}"\naddress = "127.0.0.1:{port}"\nprofile = "smtps"\n'
            f'cert_file = "{cert_file}"\nkey_file = "{key_file}"\n{extra}')


def loopback_dns(port: int) -> str:
    """The nameserver of tests/support/dns_server.py on 127.0.0.1:`port`, with a short time-out."""
    return f'[dns]\nnameservers = ["127.0.0.1"]\nport = {port}\ntimeout = 2\n'


def log_and_metrics(workdir: Path, metrics_port: int) -> str:
    """Both transaction logs under `workdir` (log/tx.jsonl, w3c/) and /metrics on loopback."""
    return (f'[log]\njson_file = "{workdir / "log" / "tx.jsonl"}"\nw3c_dir = "{workdir / "w3c"}"\n\n'
            f'[metrics]\naddress = "127.0.0.1:{metrics_port}"\n')


def cluster_queue(dsn: str, password_file: Path, node_name: str = "", takeover_time: str = "") -> str:
    """The PostgreSQL queue `dsn` names; `node_name` and `takeover_time` only when given."""
    text = f'[queue]\nbackend = "postgresql"\ndsn = "{dsn}"\npassword_file = "{password_file}"\n'
    if node_name:
        text += f'node_name = "{node_name}"\n'
    if takeover_time:
        text += f'takeover_time = "{takeover_time}"\n'
    return text


def console(port: int, extra: str = "") -> str:
    """The web console, enabled, on 127.0.0.1:`port`; `extra`: more lines for [console]."""
    return f'[console]\nenabled = true\naddress = "127.0.0.1:{port}"\n{extra}'
