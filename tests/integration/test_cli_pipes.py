"""Output into a pipe whose reader has gone (`| head`) ends quietly (issue 20 item 10): before,
`config show` and `relay-test --json` ended in a BrokenPipeError traceback."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import free_port


def run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write fails (EPIPE)
    try:
        return subprocess.run([sys.executable, "-m", "mailgate", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, cwd="/")
    finally:
        os.close(write_end)


def test_relay_test_json_into_a_closed_pipe_has_no_traceback() -> None:
    result = run_into_closed_pipe("relay-test", f"127.0.0.1:{free_port()}", "--json", "--timeout", "5")
    assert result.returncode == 1, result.stderr  # nobody listens: INCONCLUSIVE, then the pipe
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_config_show_into_a_closed_pipe_has_no_traceback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "m.toml"
    config.write_text('[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\ntls = "none"\n')
    result = run_into_closed_pipe("config", "show", "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""
