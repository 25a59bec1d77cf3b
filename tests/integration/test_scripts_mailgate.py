"""`sh scripts/mailgate` runs in the caller's folder (issue 20 item 12): a relative --config is
the caller's. Before, the script changed to the repository folder first and the file was not found."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]


def test_a_relative_config_is_read_from_the_callers_folder(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / "bin" / "mailgate").exists():
        unavailable("the checkout's .venv (scripts/test makes it) is missing")
    (tmp_path / "mine.toml").write_text('[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\ntls = "none"\n')
    result = subprocess.run(["sh", str(ROOT / "scripts" / "mailgate"), "config", "check", "--config", "mine.toml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "mine.toml: OK\n"
