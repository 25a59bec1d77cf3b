"""One server per address and per spool (issue 20 item 1, issue 13 item 3).

A second `mailgate serve` that names a listener or metrics address the first one holds must not
start (exit 1, one line saying "address already in use"), even with several workers; a second
one on the same spool must not start either (it would recover the live one's leases); and a
queue command that would write a live spool behind its server's back refuses.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support.mailgate_server import MailgateProcess

pytestmark = pytest.mark.timeout(120)


def _config(directory: Path, port: int, *, spool: Path | None = None, metrics: int | None = None,
            workers: int = 2, control: str = "") -> str:
    metrics_section = f'\n[metrics]\naddress = "127.0.0.1:{metrics}"\n' if metrics else ""
    return f"""
[server]
spool_dir = "{spool or directory / 'spool'}"
users_file = "{directory}/users"
workers = {workers}
self_audit = false
control_socket = "{control or directory / 'control.sock'}"

[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
tls = "none"
{metrics_section}"""


def _wait_ready(mailgate: MailgateProcess, workers: int) -> None:
    deadline = time.monotonic() + 30
    while mailgate.log().count("mailgate ready") < workers:
        assert mailgate.process is not None and mailgate.process.poll() is None, mailgate.log()
        assert time.monotonic() < deadline, mailgate.log()
        time.sleep(0.1)


def _second(tmp_path: Path, config: str) -> tuple[int, str]:
    """Run a second server to its end (it must not start); its exit code and output."""
    directory = tmp_path / "second"
    directory.mkdir(exist_ok=True)
    path = directory / "mailgate.toml"
    path.write_text(config)
    process = subprocess.Popen(
        [sys.executable, "-m", "mailgate", "serve", "--config", str(path)],
        cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.terminate()  # it started: the failure the test is about
        output, _ = process.communicate(timeout=30)
        return -1, output
    return process.returncode, output


def _greetings(port: int, count: int) -> int:
    """How many of `count` connections get a greeting (each closed after its greeting)."""
    answered = 0
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            if sock.recv(512).startswith(b"220 "):
                answered += 1
    return answered


def test_a_second_server_on_the_same_listener_address_exits_1(tmp_path: Path) -> None:
    port = free_port()
    first = MailgateProcess(tmp_path, _config(tmp_path, port)).start(wait=("127.0.0.1", port))
    try:
        _wait_ready(first, 2)
        code, output = _second(tmp_path, _config(tmp_path / "second", port))
        assert code == 1, output
        lines = [line for line in output.splitlines() if "cannot start" in line]
        assert lines == [f"mailgate: cannot start: listener[0].address 127.0.0.1:{port}: "
                         "address already in use (another process listens there)"], output
        assert "Traceback" not in output
        assert _greetings(port, 10) == 10  # the first server still answers every connection
    finally:
        first.stop()


def test_a_second_server_on_the_same_metrics_address_exits_1(tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    first = MailgateProcess(tmp_path, _config(tmp_path, port, metrics=metrics, workers=1))
    first.start(wait=("127.0.0.1", port))
    try:
        _wait_ready(first, 1)
        code, output = _second(tmp_path, _config(tmp_path / "second", free_port(), metrics=metrics, workers=1))
        assert code == 1, output
        assert f"metrics.address 127.0.0.1:{metrics}: address already in use" in output
        assert "Traceback" not in output
    finally:
        first.stop()


def test_a_worker_metrics_port_conflict_names_the_configured_address(tmp_path: Path) -> None:
    """Worker 1 serves metrics on the configured port + 1: a conflict there names both."""
    metrics = free_port()
    with socket.create_server(("127.0.0.1", metrics + 1)):
        code, output = _second(tmp_path, _config(tmp_path, free_port(), metrics=metrics, workers=2))
    assert code == 1, output
    assert output.strip().splitlines()[-1] == (
        f"mailgate: cannot start: metrics.address 127.0.0.1:{metrics} (worker 1 serves port {metrics + 1}): "
        "address already in use (another process listens there)"
    ), output
    assert "Traceback" not in output


def test_a_second_server_on_the_same_spool_exits_1_without_touching_it(tmp_path: Path) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    first = MailgateProcess(tmp_path, _config(tmp_path, port)).start(wait=("127.0.0.1", port))
    try:
        _wait_ready(first, 2)
        assert first.process is not None
        config = _config(tmp_path / "second", free_port(), spool=spool, control=str(tmp_path / "second.sock"))
        code, output = _second(tmp_path, config)
        assert code == 1, output
        assert output.strip().splitlines()[-1] == (
            f"mailgate: cannot start: spool {spool} is in use by mailgate (pid {first.process.pid}); "
            "one server per spool"
        ), output
        assert "recovered" not in output
    finally:
        first.stop()
    # Once the first server is gone the spool is free again.
    second = MailgateProcess(tmp_path / "second", _config(tmp_path / "second", port, spool=spool))
    second.start(wait=("127.0.0.1", port))
    second.stop()


def test_queue_commands_do_not_write_a_live_spool_behind_its_server(tmp_path: Path) -> None:
    port = free_port()
    first = MailgateProcess(tmp_path, _config(tmp_path, port, workers=1)).start(wait=("127.0.0.1", port))
    try:
        _wait_ready(first, 1)
        # Another configuration on the same spool whose control socket nobody serves.
        other = tmp_path / "other.toml"
        other.write_text(_config(tmp_path, port, control=str(tmp_path / "nobody.sock"), workers=1))

        def queue(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "mailgate", "queue", *args, "--config", str(other)],
                                  capture_output=True, text=True, timeout=60)

        deleted = queue("delete", "--all")
        assert deleted.returncode == 1, deleted
        assert deleted.stderr.startswith(f"mailgate queue delete: spool {tmp_path / 'spool'} is in use by mailgate"), deleted
        listed = queue("list")
        assert listed.returncode == 0, listed
        assert "Mail queue is empty" in listed.stdout
    finally:
        first.stop()
