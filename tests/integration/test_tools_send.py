"""`mailgate send` against a real mailgate: STARTTLS and AUTH on submission, implicit TLS, an
attachment arriving in the queue, refusals and their exit codes."""

from __future__ import annotations

import argparse
import email
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.auth.store import FileUserStore
from mailgate.cli import send_cmd
from tests.conftest import free_port
from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import EXTERNAL, HOSTED, UNTRUSTED_SOURCE, config_text, only_message, queued

pytestmark = pytest.mark.timeout(60)

USER, PASSWORD = "alice", "correct horse battery"


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailgate")
    send_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture
def mailgate(tmp_path: Path, tls_files: dict[str, str]) -> Iterator[InProcessMailgate]:
    FileUserStore(tmp_path / "users").add(USER, PASSWORD, [f"{USER}@{HOSTED}"])
    with InProcessMailgate(config_text(tmp_path, tls_files)) as mg:
        yield mg


@pytest.fixture
def password_file(tmp_path: Path) -> str:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    return str(path)


def test_starttls_auth_and_attachment(
    mailgate: InProcessMailgate, tls_files: dict[str, str], password_file: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    attachment = tmp_path / "report.csv"
    attachment.write_text("a,b\n1,2\n")
    code = cli([
        "send", "--server", f"127.0.0.1:{mailgate.port('submission')}", "--source-address", UNTRUSTED_SOURCE,
        "--from", f"{USER}@{HOSTED}", "--to", f"someone@{EXTERNAL}", "--subject", "tool test",
        "--body", "hello from the tool", "--attach", str(attachment), "--user", USER,
        "--password-file", password_file, "--tls", "starttls", "--ca-file", tls_files["ca"],
    ])
    out = capsys.readouterr().out

    assert code == 0
    assert "C: STARTTLS" in out and "* TLS established: TLSv1." in out
    assert "C: AUTH PLAIN <credentials hidden>" in out and "S: 235 2.7.0" in out
    assert PASSWORD not in out
    assert "sent: 250 2.0.0 OK queued as" in out
    summary, stored = only_message(mailgate)
    message = email.message_from_bytes(stored)
    assert message["Subject"] == "tool test"
    parts = {part.get_filename(): part.get_payload(decode=True) for part in message.walk() if part.get_filename()}
    assert parts == {"report.csv": b"a,b\n1,2\n"}
    assert "ESMTPSA" in message["Received"]


def test_implicit_tls_with_auth(
    mailgate: InProcessMailgate, password_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli([
        "send", "--server", f"127.0.0.1:{mailgate.port('smtps')}", "--tls", "implicit", "-q",
        "--from", f"{USER}@{HOSTED}", "--to", f"a@{EXTERNAL}", "--user", USER, "--password-file", password_file,
    ])
    assert code == 0
    assert "sent: 250" in capsys.readouterr().out
    assert len(queued(mailgate)) == 1


def test_auth_is_never_sent_in_clear(
    mailgate: InProcessMailgate, password_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli([
        "send", "--server", f"127.0.0.1:{mailgate.port('mx')}", "--tls", "none",
        "--from", f"{USER}@{HOSTED}", "--to", f"a@{EXTERNAL}", "--user", USER, "--password-file", password_file,
    ])
    captured = capsys.readouterr()
    assert code == 1
    assert "refusing to send a password without TLS" in captured.err
    assert "AUTH" not in "\n".join(line for line in captured.out.splitlines() if line.startswith("C: "))
    assert queued(mailgate) == []


def test_refused_recipient_exits_1_and_the_rest_is_sent(
    mailgate: InProcessMailgate, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli([
        "send", "--server", f"127.0.0.1:{mailgate.port('mx')}", "--source-address", UNTRUSTED_SOURCE,
        "--from", f"x@{EXTERNAL}", "--to", f"in@{HOSTED}", "--to", f"out@{EXTERNAL}",
    ])
    out = capsys.readouterr().out
    assert code == 1
    assert f"refused: <out@{EXTERNAL}>: 550 5.7.1 Unable to relay" in out
    assert "sent: 250" in out
    assert len(queued(mailgate)) == 1


def test_connection_problem_exits_3_and_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["send", "--server", f"127.0.0.1:{free_port()}", "--from", "a@b.test", "--to", "c@d.test"]) == 3
    assert "not sent: connect:" in capsys.readouterr().err
    assert cli(["send", "--server", "127.0.0.1:99999", "--from", "a@b.test", "--to", "c@d.test"]) == 2
    assert cli(["send", "--server", "127.0.0.1:25", "--from", "a@b.test", "--to", "c@d.test",
                "--attach", "/nonexistent/file"]) == 2
