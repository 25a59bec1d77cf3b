"""`mailgate queue` and `mailq` on a wrong spool: one line naming the path and the fix, exit 2,
and nothing created (issue 20 items 4 and 6)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CONFIG = '[server]\nspool_dir = "{spool}"\n[[listener]]\nname = "mx"\naddress = "127.0.0.1:2799"\ntls = "none"\n'


def queue_list(tmp_path, spool) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "mailgate.toml"
    config.write_text(CONFIG.format(spool=spool))
    return subprocess.run([sys.executable, "-m", "mailgate", "queue", "list", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)


@pytest.mark.parametrize("kind, expected", [
    ("missing", "no such directory (nothing was created)"),
    ("file", "not a directory"),
    ("empty", "holds no queue (queue.db)"),
])
def test_a_wrong_spool_is_one_line_and_exit_2(tmp_path, kind, expected) -> None:
    spool = tmp_path / "spool"
    if kind == "file":
        spool.write_text("")
    elif kind == "empty":
        spool.mkdir()
    result = queue_list(tmp_path, spool)
    assert result.returncode == 2
    assert result.stderr.strip() == f"mailgate queue: server.spool_dir {spool}: {expected}" + (
        "; give the server's --config" if kind == "missing" else
        "; set server.spool_dir to the server's spool directory" if kind == "file" else
        "; the server has never run on it, or --config names another server")
    assert "Traceback" not in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["mailgate.toml"] + ([] if kind == "missing" else ["spool"]))
    if kind == "empty":
        assert list(spool.iterdir()) == []  # no queue.db made
