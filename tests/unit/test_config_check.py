"""`mailgate config check` refuses what `serve` refuses (issue 20 item 3): the systemd unit's
ExecStartPre relies on it, so an OK must mean the server starts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from mailgate.cli.main import main
from tests.support.as_nobody import run_as_nobody

LISTENER = """
[[listener]]
name = "mx"
address = "127.0.0.1:2525"
tls = "none"
"""


def check(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "mailgate.toml"
    path.write_text(text)
    code = main(["config", "check", str(path)])
    return code, path.name


def test_missing_certificate_file_fails_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = check(tmp_path, f"""
[[listener]]
name = "mx"
address = "127.0.0.1:2525"
tls = "starttls"
cert_file = "{tmp_path}/missing.pem"
key_file = "{tmp_path}/missing.key"
""")
    err = capsys.readouterr().err
    assert code == 2
    assert "listener[0]" in err and "missing.pem" in err and "would refuse to start" in err


def test_trusted_everywhere_fails_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = check(tmp_path, LISTENER + '[relay]\ntrusted_networks = ["0.0.0.0/0"]\n')
    err = capsys.readouterr().err
    assert code == 2 and "relay.trusted_networks" in err and "0.0.0.0/0" in err


def test_acknowledged_open_relay_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = check(tmp_path, LISTENER + '[relay]\ntrusted_networks = ["0.0.0.0/0"]\nacknowledge_open_relay = true\n')
    assert code == 0, capsys.readouterr().err


def test_users_file_that_is_a_directory_fails_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "users").mkdir()
    code, _ = check(tmp_path, f'[server]\nusers_file = "{tmp_path}/users"\n' + LISTENER)
    err = capsys.readouterr().err
    assert code == 2 and "server.users_file" in err and "Is a directory" in err


def test_malformed_users_file_fails_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "users").write_text("alice:not-a-hash:\n")
    code, _ = check(tmp_path, f'[server]\nusers_file = "{tmp_path}/users"\n' + LISTENER)
    err = capsys.readouterr().err
    assert code == 2 and "server.users_file" in err and "users:1" in err


def test_unknown_server_user_fails_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = check(tmp_path, '[server]\nuser = "no-such-user-mailgate"\n' + LISTENER)
    assert code == 2 and "server.user" in capsys.readouterr().err


def test_users_file_the_service_user_cannot_read_fails_the_check() -> None:
    """As the service user (nobody here) the check must fail where serve would: Permission denied."""
    directory = Path(tempfile.mkdtemp(prefix="mailgate-check-"))
    try:
        directory.chmod(0o755)
        users = directory / "users"
        users.write_text("# mailgate users\n")
        users.chmod(0o600)  # what `mailgate user add` as root used to leave
        config = directory / "mailgate.toml"
        config.write_text(f'[server]\nusers_file = "{users}"\n' + LISTENER)
        config.chmod(0o644)
        code, stderr = run_as_nobody(["config", "check", str(config)])
        assert code == 2, stderr
        assert "server.users_file" in stderr and "Permission denied" in stderr
        assert f"chmod 0640 {users}" in stderr
    finally:
        for path in sorted(directory.iterdir()):
            path.unlink()
        directory.rmdir()



def test_a_certificate_behind_a_closed_folder_says_so(tls_files: dict[str, str]) -> None:
    """Found in the walk through docs/operations.md: a certificate in a folder the service user
    cannot search was reported as "no such file"."""
    import shutil

    directory = Path(tempfile.mkdtemp(prefix="mailgate-tls-"))
    try:
        directory.chmod(0o755)
        closed = directory / "tls"
        closed.mkdir(mode=0o700)  # root's own: the service user cannot look inside
        shutil.copy(tls_files["cert"], closed / "cert.pem")
        shutil.copy(tls_files["key"], closed / "key.pem")
        config = directory / "mailgate.toml"
        config.write_text(f'[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\ntls = "starttls"\n'
                          f'cert_file = "{closed}/cert.pem"\nkey_file = "{closed}/key.pem"\n')
        config.chmod(0o644)
        code, stderr = run_as_nobody(["config", "check", str(config)])
        if os.geteuid() != 0:
            pytest.skip("only root can make a folder another user cannot search")
        assert code == 2, stderr
        assert "listener[0].cert_file" in stderr and "not searchable" in stderr and "no such file" not in stderr
    finally:
        shutil.rmtree(directory)


@pytest.mark.parametrize(("domain", "warned"), [
    ('name = "corp.example"\nnext_hop = ["10.0.0.5:25"]', True),  # accepts every local part
    ('name = "corp.example"\nnext_hop = ["10.0.0.5:25"]\nlocal_parts = ["alice"]', False),
    ('name = "corp.example"\nnext_hop = ["maildir:/var/mail/corp"]', False),  # a maildir takes them all
], ids=["no-validation", "local-parts", "maildir"])
def test_a_hosted_domain_that_accepts_every_recipient_is_warned_about_but_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], domain: str, warned: bool
) -> None:
    """Backscatter: unknown users refused by the internal server after our 250 become bounces to
    forged senders. The check still passes (a relay may choose it), but says so, naming the key."""
    code, name = check(tmp_path, LISTENER + f"[[domain]]\n{domain}\n")
    out, err = capsys.readouterr()
    assert code == 0 and out.strip().endswith("OK")
    assert ("domain[0] corp.example: no recipient_sources or local_parts" in err) is warned
    assert ("backscatter" in err) is warned
