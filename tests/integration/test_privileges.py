"""Binding a privileged port as root, then dropping to an unprivileged user for good.

The drop runs in a child process (it cannot be undone in the test process). Needs root and the
usual `nobody` user; skipped elsewhere, failed in CI (MAILGATE_REQUIRE_E2E=1).
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mailgate.server.privileges import (
    Identity,
    PrivilegeError,
    bind_listener_socket,
    drop_privileges,
    resolve_identity,
    spool_ownership_problems,
)

pytestmark = pytest.mark.timeout(60)
REPO_ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import os, socket, sys
from mailgate.server.privileges import bind_listener_socket, drop_privileges, resolve_identity
port, other_port = int(sys.argv[1]), int(sys.argv[2])
listening = bind_listener_socket("127.0.0.1", port)
drop_privileges(resolve_identity("nobody"))
print("ids", os.getresuid(), os.getresgid(), sorted(os.getgroups()), flush=True)
try:
    bind_listener_socket("127.0.0.1", other_port)
    print("rebind allowed", flush=True)
except PermissionError:
    print("rebind refused", flush=True)
listening.setblocking(True)
connection, _ = listening.accept()
connection.sendall(b"served by uid %d\n" % os.geteuid())
connection.close()
"""


def _require_root_and_nobody() -> pwd.struct_passwd:
    reason = None
    if os.geteuid() != 0:
        reason = "dropping privileges needs root"
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        reason = "no `nobody` user"
    if reason:
        if os.environ.get("MAILGATE_REQUIRE_E2E"):
            pytest.fail(reason)
        pytest.skip(reason)
    return nobody


def _free_privileged_ports(count: int) -> list[int]:
    ports = []
    for port in range(900, 1024):
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        ports.append(port)
        if len(ports) == count:
            return ports
    pytest.skip("no free privileged port on 127.0.0.1")


def test_a_privileged_port_keeps_serving_after_the_drop_and_root_is_gone() -> None:
    nobody = _require_root_and_nobody()
    port, other_port = _free_privileged_ports(2)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(port), str(other_port)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        ids = child.stdout.readline()
        rebind = child.stdout.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            greeting = client.makefile("rb").readline()
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == 0, child.stderr.read() if child.stderr else ""
    uid, gid = nobody.pw_uid, nobody.pw_gid
    assert ids.strip() == f"ids {(uid, uid, uid)} {(gid, gid, gid)} {sorted(set(os.getgrouplist('nobody', gid)))}"
    assert rebind.strip() == "rebind refused"  # binding port <1024 again is no longer possible
    assert greeting == f"served by uid {uid}\n".encode()


def test_resolve_identity_names_the_key_of_an_unknown_user_or_group() -> None:
    with pytest.raises(PrivilegeError, match="server.user"):
        resolve_identity("no-such-user-mailgate-test")
    with pytest.raises(PrivilegeError, match="server.group"):
        resolve_identity("root", "no-such-group-mailgate-test")
    root = resolve_identity("root")
    assert (root.uid, root.gid) == (0, 0) and 0 in root.groups


def test_running_as_root_is_refused() -> None:
    _require_root_and_nobody()
    with pytest.raises(PrivilegeError, match="refusing to run as root"):
        drop_privileges(Identity("root", 0, 0, (0,)))
    assert os.geteuid() == 0  # nothing was changed before the refusal


def test_bind_listener_socket_listens_on_ipv4_and_ipv6() -> None:
    for host in ("127.0.0.1", "::1"):
        try:
            sock = bind_listener_socket(host, 0)
        except OSError as exc:
            pytest.skip(f"{host} unavailable: {exc}")
        with sock:
            port = sock.getsockname()[1]
            with socket.create_connection((host, port), timeout=5):
                pass
            assert not sock.getblocking()


def test_bind_listener_socket_with_reuse_port_lets_workers_share_a_port() -> None:
    with bind_listener_socket("127.0.0.1", 0, reuse_port=True) as first:
        port = first.getsockname()[1]
        with bind_listener_socket("127.0.0.1", port, reuse_port=True) as second:
            assert second.getsockname()[1] == port
        with pytest.raises(OSError):
            bind_listener_socket("127.0.0.1", port)  # without it the port is taken


def test_spool_ownership_problems_are_reported_not_repaired(tmp_path: Path) -> None:
    nobody = _require_root_and_nobody()
    identity = resolve_identity("nobody")
    spool = tmp_path / "spool"
    assert "does not exist" in spool_ownership_problems(spool, identity)[0]
    spool.mkdir()
    (spool / "queue.db").touch()  # as root: the classic "ran it once as root" mistake
    os.chown(spool, nobody.pw_uid, nobody.pw_gid)
    problems = spool_ownership_problems(spool, identity)
    assert len(problems) == 1 and "queue.db" in problems[0] and "nobody" in problems[0]
    assert (spool / "queue.db").stat().st_uid == 0  # untouched
    os.chown(spool / "queue.db", nobody.pw_uid, nobody.pw_gid)
    assert spool_ownership_problems(spool, identity) == []
    spool.chmod(0o777)
    assert any("writable by everyone" in p for p in spool_ownership_problems(spool, identity))
