"""Start-up errors of the supervisor name their real cause (walk-through of docs/operations.md on a
clean root: a /dev/shm the service could not write was reported as a spool_dir problem)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate import supervisor
from mailgate.config.loader import load_text
from mailgate.server import listen_sockets


def test_shared_counters_failure_is_not_blamed_on_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_text(f"""
[server]
spool_dir = "{tmp_path}/spool"
workers = 2

[[listener]]
name = "mx"
address = "127.0.0.1:2525"
tls = "none"
""")
    monkeypatch.setattr(listen_sockets, "bind_all", lambda *_args, **_kwargs: [listen_sockets.WorkerSockets() for _ in range(2)])

    def no_shared_memory(*_args: object) -> None:
        raise PermissionError(13, "Permission denied", "/dev/shm/pym-1-abc")

    monkeypatch.setattr(supervisor, "SharedCounts", no_shared_memory)
    started: list[object] = []
    assert supervisor.run(config, started.append, lambda index, count: None) == 1
    error = capsys.readouterr().err
    assert error.startswith("mailgate: cannot start: the workers' shared counters need a writable /dev/shm")
    assert "spool_dir" not in error and error.count("\n") == 1
    assert started == []
