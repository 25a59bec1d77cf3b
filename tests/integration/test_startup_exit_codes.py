"""Start-up failures and their exit codes (issue 21 item 6): an operating-system error while
starting exits 1, so the systemd unit (Restart=on-failure) tries again; configuration errors stay 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)


def test_an_os_error_at_start_exits_1_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the control socket's folder should be\n")
    config = tmp_path / "mailgate.toml"
    config.write_text(f"""
[server]
spool_dir = "{tmp_path}/spool"
users_file = "{tmp_path}/users"
workers = 1
self_audit = false
control_socket = "{blocker}/control.sock"

[[listener]]
name = "mx"
address = "127.0.0.1:{free_port()}"
tls = "none"
""")
    result = subprocess.run([sys.executable, "-m", "mailgate", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=50)
    assert result.returncode == 1, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("mailgate: cannot start:")]
    assert len(errors) == 1 and str(blocker) in errors[0], result.stderr
    assert "Traceback" not in result.stderr
