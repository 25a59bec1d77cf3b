"""The supervisor's workers never outlive it: killed with SIGKILL, its workers stop too."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.support.config_text import TWO_WORKERS, relay_config
from tests.support.mailgate_server import MailgateProcess, wait_for_port

pytestmark = pytest.mark.timeout(60)


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    port = free_port()
    config = relay_config(tmp_path / "spool", port, server=TWO_WORKERS, trust_loopback=False)
    mailgate = MailgateProcess(tmp_path, config).start(wait=("127.0.0.1", port))
    try:
        deadline = time.monotonic() + 30
        while mailgate.log().count("mailgate ready") < 2:
            assert time.monotonic() < deadline, mailgate.log()
            time.sleep(0.1)
        supervisor = mailgate.process.pid
        workers = [int(pid) for pid in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()]
        assert len(workers) == 2
        os.kill(supervisor, signal.SIGKILL)  # only the supervisor
        mailgate.process.wait(10)
        while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in workers):
            assert time.monotonic() < deadline + 20, "a worker outlived its supervisor"
            time.sleep(0.1)
        with pytest.raises(TimeoutError):
            wait_for_port("127.0.0.1", port, timeout=1)
    finally:
        mailgate.kill()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (FileNotFoundError, IndexError):
        return "zombie"
