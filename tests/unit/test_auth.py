"""User store (argon2id file), AUTH failure tracking and the `mailgate user` handlers."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from argon2 import PasswordHasher

import mailgate.auth.store as store_module
from tests.support.as_nobody import NOBODY, run_as_nobody
from mailgate.auth.lockout import AuthFailureTracker, client_key
from mailgate.auth.store import (
    FileUserStore,
    UnknownUserError,
    UserExistsError,
    UserFileError,
)
from mailgate.cli import user_cmd
from mailgate.core.clock import FakeClock

pytestmark = pytest.mark.timeout(60)


def cheap_hasher(time_cost: int = 1) -> PasswordHasher:
    """Real argon2id with tiny costs, so the tests stay fast."""
    return PasswordHasher(time_cost=time_cost, memory_cost=64, parallelism=1)


@pytest.fixture
def users_path(tmp_path: Path) -> Path:
    return tmp_path / "users"


@pytest.fixture
def store(users_path: Path) -> FileUserStore:
    return FileUserStore(users_path, hasher=cheap_hasher())


# --- FileUserStore ---------------------------------------------------------------------------------


def test_add_then_verify(store: FileUserStore) -> None:
    store.add("alice@example.org", "correct horse")
    assert store.verify("alice@example.org", "correct horse")
    assert not store.verify("alice@example.org", "wrong horse")
    assert not store.verify("alice@example.org", "")
    assert not store.verify("bob@example.org", "correct horse")


def test_names_are_case_insensitive(store: FileUserStore) -> None:
    store.add("Alice@Example.ORG", "pw")
    assert store.verify("ALICE@example.org", "pw")
    assert store.list() == [("alice@example.org", ())]
    with pytest.raises(UserExistsError):
        store.add("alice@EXAMPLE.org", "other")


def test_the_file_holds_argon2id_hashes_not_passwords(store: FileUserStore, users_path: Path) -> None:
    store.add("alice", "s3cret-value")
    text = users_path.read_text()
    assert "s3cret-value" not in text
    assert "alice:$argon2id$v=19$" in text


def test_allowed_senders_are_normalised(store: FileUserStore) -> None:
    store.add("alice", "pw", ["Alice@Bücher.Example", "@Example.ORG", " <> "])
    store.add("bob", "pw")
    assert store.allowed_senders("alice") == ("Alice@xn--bcher-kva.example", "@example.org", "<>")
    assert FileUserStore(store.path).allowed_senders("alice")[-1] == "<>"  # survives the file
    assert store.allowed_senders("bob") == ()
    assert store.allowed_senders("nobody") == ()


@pytest.mark.parametrize("entry", ["not an address", "a@b@c", "@", "@bad_domain.example", "x@-bad.example"])
def test_bad_sender_entries_are_refused(store: FileUserStore, entry: str) -> None:
    with pytest.raises(ValueError):
        store.add("alice", "pw", [entry])
    assert store.list() == []


@pytest.mark.parametrize("name", ["", "a:b", "a,b", "has space", "#comment", "tab\there", "x" * 255])
def test_bad_user_names_are_refused(store: FileUserStore, name: str) -> None:
    with pytest.raises(ValueError):
        store.add(name, "pw")
    assert not store.verify(name, "pw")


def test_empty_password_is_refused(store: FileUserStore) -> None:
    with pytest.raises(ValueError):
        store.add("alice", "")


def test_set_password_delete_and_list(store: FileUserStore) -> None:
    store.add("carol", "one")
    store.add("alice", "two", ["alice@example.org"])
    store.set_password("carol", "three")
    assert store.verify("carol", "three") and not store.verify("carol", "one")
    assert store.list() == [("alice", ("alice@example.org",)), ("carol", ())]
    store.delete("CAROL")
    assert store.list() == [("alice", ("alice@example.org",))]
    assert not store.verify("carol", "three")
    with pytest.raises(UnknownUserError):
        store.delete("carol")
    with pytest.raises(UnknownUserError):
        store.set_password("carol", "x")


def test_file_is_written_atomically_with_mode_0600(store: FileUserStore, users_path: Path) -> None:
    store.add("alice", "pw")
    first_inode = users_path.stat().st_ino
    store.add("bob", "pw")
    assert stat.S_IMODE(users_path.stat().st_mode) == 0o600
    assert users_path.stat().st_ino != first_inode  # replaced by rename, not rewritten in place
    leftovers = [p.name for p in users_path.parent.iterdir() if p.name not in ("users", "users.lock")]
    assert leftovers == []


def test_a_failed_change_leaves_the_file_untouched(store: FileUserStore, users_path: Path) -> None:
    store.add("alice", "pw")
    before = users_path.read_bytes()
    with pytest.raises(UserExistsError):
        store.add("alice", "other")
    assert users_path.read_bytes() == before


def test_missing_file_is_an_empty_store(users_path: Path) -> None:
    store = FileUserStore(users_path, hasher=cheap_hasher())
    assert store.list() == []
    assert not store.verify("alice", "pw")
    assert not users_path.exists()


def test_changes_by_another_process_are_seen_and_kept(users_path: Path) -> None:
    server = FileUserStore(users_path, hasher=cheap_hasher())
    cli = FileUserStore(users_path, hasher=cheap_hasher())
    cli.add("alice", "pw")
    assert server.verify("alice", "pw")  # no explicit reload needed
    server.add("bob", "pw")  # server's copy predates nothing: it re-reads under the lock
    cli.add("carol", "pw")
    assert [name for name, _ in FileUserStore(users_path, hasher=cheap_hasher()).list()] == [
        "alice", "bob", "carol"]


def test_reload_reads_the_file_again(store: FileUserStore, users_path: Path) -> None:
    store.add("alice", "pw")
    users_path.unlink()
    store.reload()
    assert store.list() == []


def test_old_parameters_are_rehashed_on_successful_verify(users_path: Path) -> None:
    FileUserStore(users_path, hasher=cheap_hasher(time_cost=1)).add("alice", "pw")
    old_hash = users_path.read_text().splitlines()[1].split(":")[1]
    assert "t=1" in old_hash
    upgraded = FileUserStore(users_path, hasher=cheap_hasher(time_cost=2))
    assert not upgraded.verify("alice", "wrong")
    assert users_path.read_text().splitlines()[1].split(":")[1] == old_hash  # no rehash on failure
    assert upgraded.verify("alice", "pw")
    new_hash = users_path.read_text().splitlines()[1].split(":")[1]
    assert "t=2" in new_hash and new_hash != old_hash
    assert FileUserStore(users_path, hasher=cheap_hasher(time_cost=2)).verify("alice", "pw")


def test_unknown_user_still_costs_a_hash_verification(users_path: Path) -> None:
    class CountingHasher(PasswordHasher):
        verifications = 0

        def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # noqa: A002
            CountingHasher.verifications += 1
            return super().verify(hash, password)

    store = FileUserStore(users_path, hasher=CountingHasher(time_cost=1, memory_cost=64, parallelism=1))
    assert not store.verify("nobody", "pw")
    assert not store.verify("bad:name", "pw")
    assert CountingHasher.verifications == 2


def test_malformed_file_names_the_line(users_path: Path) -> None:
    users_path.write_text("# comment\n\nalice:$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA:\nbroken line\n")
    with pytest.raises(UserFileError, match=r"users:4"):
        FileUserStore(users_path, hasher=cheap_hasher())
    users_path.write_text("alice:$argon2id$x:\nALICE:$argon2id$y:\n")
    with pytest.raises(UserFileError, match="twice"):
        FileUserStore(users_path, hasher=cheap_hasher())


def test_a_broken_edit_keeps_the_users_already_loaded(store: FileUserStore, users_path: Path) -> None:
    store.add("alice", "pw")
    users_path.write_text("this is not a users file\n")
    assert store.verify("alice", "pw")
    with pytest.raises(UserFileError):
        store.reload()
    assert store.verify("alice", "pw")


def test_verify_runs_in_a_worker_thread(store: FileUserStore) -> None:
    store.add("alice", "pw")

    async def check() -> list[bool]:
        return list(await asyncio.gather(
            asyncio.to_thread(store.verify, "alice", "pw"),
            asyncio.to_thread(store.verify, "alice", "nope"),
        ))

    assert asyncio.run(check()) == [True, False]


# --- AuthFailureTracker ----------------------------------------------------------------------------


def test_delay_grows_then_caps() -> None:
    tracker = AuthFailureTracker(FakeClock(), max_failures=10)
    delays = []
    for _ in range(6):
        tracker.failure("192.0.2.1")
        delays.append(tracker.delay_for("192.0.2.1"))
    assert tracker.delay_for("192.0.2.2") == 0.0
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_lockout_after_max_failures_and_its_end() -> None:
    clock = FakeClock()
    tracker = AuthFailureTracker(clock)
    for _ in range(4):
        tracker.failure("192.0.2.1")
    assert not tracker.is_locked("192.0.2.1")
    tracker.failure("192.0.2.1")
    assert tracker.is_locked("192.0.2.1")
    assert not tracker.is_locked("192.0.2.9")
    clock.advance(899)
    assert tracker.is_locked("192.0.2.1")
    clock.advance(2)
    assert not tracker.is_locked("192.0.2.1")
    assert tracker.delay_for("192.0.2.1") == 0.0  # the failures left the window too


def test_failures_outside_the_window_do_not_count() -> None:
    clock = FakeClock()
    tracker = AuthFailureTracker(clock, max_failures=3, window=60)
    for _ in range(10):
        tracker.failure("192.0.2.1")
        clock.advance(31)  # at most two failures inside any 60 s
    assert not tracker.is_locked("192.0.2.1")
    assert tracker.delay_for("192.0.2.1") == 1.0


def test_success_clears_failures_but_not_a_running_lockout() -> None:
    tracker = AuthFailureTracker(FakeClock(), max_failures=3)
    tracker.failure("192.0.2.1")
    tracker.failure("192.0.2.1")
    tracker.success("192.0.2.1")
    assert tracker.delay_for("192.0.2.1") == 0.0
    for _ in range(3):
        tracker.failure("192.0.2.1")
    tracker.success("192.0.2.1")
    assert tracker.is_locked("192.0.2.1")


def test_ipv6_clients_are_counted_per_64() -> None:
    tracker = AuthFailureTracker(FakeClock(), max_failures=2)
    tracker.failure("2001:db8:1:2::1")
    tracker.failure("2001:db8:1:2:ffff::9")
    assert tracker.is_locked("2001:db8:1:2::abcd")
    assert not tracker.is_locked("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("2001:db8::1") == "2001:db8::/64"


def test_memory_stays_bounded() -> None:
    clock = FakeClock()
    tracker = AuthFailureTracker(clock, max_clients=10)
    for index in range(200):
        tracker.failure(f"198.51.100.{index % 250}" if index < 100 else f"203.0.113.{index - 100}")
    assert len(tracker) == 10
    assert tracker.delay_for("203.0.113.99") == 1.0  # the newest are kept
    clock.advance(10_000)  # everything is stale now: new failures prune the old entries
    for index in range(3):
        tracker.failure(f"192.0.2.{index}")
    assert len(tracker) < 10


# --- mailgate user ---------------------------------------------------------------------------------


def user_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailgate")
    user_cmd.register(parser.add_subparsers(dest="command"))
    return parser


@pytest.fixture
def config_path(users_path: Path) -> Path:
    """A configuration naming the users file (server.users_file), as `mailgate user` reads it."""
    path = users_path.parent / "mailgate.toml"
    path.write_text(f'[server]\nusers_file = "{users_path}"\n[[listener]]\nname = "mx"\n'
                    'address = "127.0.0.1:2525"\ntls = "none"\n')
    return path


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, config_path: Path):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(store_module, "PasswordHasher", lambda: cheap_hasher())
    parser = user_parser()

    def run(*argv: str, stdin: str | io.StringIO = "") -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin) if isinstance(stdin, str) else stdin)
        args = parser.parse_args(["user", *argv, "--config", str(config_path)])
        return args.handler(args)

    return run


def test_cli_add_reads_the_password_from_stdin(cli, users_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("add", "Alice@Example.org", "--allow-sender", "alice@example.org,@example.net",
               stdin="pass word\n") == 0
    store = FileUserStore(users_path, hasher=cheap_hasher())
    assert store.verify("alice@example.org", "pass word")
    assert store.allowed_senders("alice@example.org") == ("alice@example.org", "@example.net")
    assert cli("add", "alice@example.org", stdin="x\n") == 1


def test_cli_passwd_delete_and_exit_codes(cli, users_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("passwd", "bob", stdin="x\n") == 1
    assert cli("add", "bob", stdin="one\r\n") == 0
    assert cli("passwd", "bob", stdin="two\n") == 0
    assert FileUserStore(users_path, hasher=cheap_hasher()).verify("bob", "two")
    assert cli("delete", "bob") == 0
    assert cli("delete", "bob") == 1
    assert cli("add", "bob", stdin="\n") == 2  # empty password
    assert cli("add", "bad:name", stdin="pw\n") == 2
    assert cli("add", "bob", "--allow-sender", "not an address", stdin="pw\n") == 2
    assert FileUserStore(users_path, hasher=cheap_hasher()).list() == []


def test_cli_list(cli, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    cli("add", "bob", stdin="pw\n")
    cli("add", "alice", "--allow-sender", "@example.org", stdin="pw\n")
    capsys.readouterr()
    assert cli("list") == 0
    assert capsys.readouterr().out == "alice\t@example.org\nbob\t(login name only)\n"


def test_cli_users_file_comes_from_the_configuration(cli, tmp_path: Path, users_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    """Without --users-file the file is server.users_file of --config (issue 20 item 6)."""
    assert cli("add", "erin", stdin="pw\n") == 0
    assert FileUserStore(users_path, hasher=cheap_hasher()).list() == [("erin", ())]
    assert cli("list", "--users-file", str(tmp_path / "other")) == 0
    args = user_parser().parse_args(["user", "list", "--config", str(tmp_path / "missing.toml")])
    assert args.handler(args) == 2
    assert "missing.toml: no such file" in capsys.readouterr().err


def test_cli_help_names_the_real_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        user_parser().parse_args(["user", "add", "--help"])
    out = capsys.readouterr().out
    assert "server.users_file" in out and "auth.users_file" not in out and "--config" in out


def test_cli_asks_twice_on_a_terminal(cli, monkeypatch: pytest.MonkeyPatch, users_path: Path) -> None:  # type: ignore[no-untyped-def]
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["tty-pass", "tty-pass", "first", "second"])
    monkeypatch.setattr(user_cmd.getpass, "getpass", lambda prompt="": next(answers))
    assert cli("add", "carol", stdin=Terminal()) == 0
    assert FileUserStore(users_path, hasher=cheap_hasher()).verify("carol", "tty-pass")
    assert cli("passwd", "carol", stdin=Terminal()) == 2  # the two entries differ
    assert FileUserStore(users_path, hasher=cheap_hasher()).verify("carol", "tty-pass")


def test_password_is_never_an_argument(cli) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        cli("add", "dave", "--password", "x")


# --- a users file root creates is readable by the service user (issue 20 item 5) ------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root creates files for another user")


@pytest.fixture
def service_folder():  # type: ignore[no-untyped-def]
    """/etc/mailgate as docs/operations.md makes it: root, group of the service user, 0750."""
    folder = Path(tempfile.mkdtemp(prefix="mailgate-etc-"))
    os.chown(folder, 0, NOBODY)
    folder.chmod(0o750)
    yield folder
    shutil.rmtree(folder)


def write_config(folder: Path, server: str = "") -> Path:
    config = folder / "mailgate.toml"
    config.write_text(f'[server]\nusers_file = "{folder}/users"\n{server}\n[[listener]]\nname = "mx"\n'
                      'address = "127.0.0.1:2525"\ntls = "none"\n')
    config.chmod(0o640)
    os.chown(config, 0, NOBODY)
    return config


@needs_root
def test_root_creates_the_users_file_readable_by_the_folders_group(
    cli, monkeypatch: pytest.MonkeyPatch, service_folder: Path,
) -> None:  # type: ignore[no-untyped-def]
    config = write_config(service_folder)
    users = service_folder / "users"
    add = user_parser().parse_args(["user", "add", "alice", "--config", str(config)])
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert add.handler(add) == 0
    info = users.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, NOBODY, 0o640)
    again = user_parser().parse_args(["user", "add", "bob", "--config", str(config)])
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert again.handler(again) == 0
    info = users.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, NOBODY, 0o640)  # an edit keeps it
    code, output = run_as_nobody(["config", "check", str(config)])  # what the service user sees
    assert code == 0, output


@needs_root
def test_root_creates_the_users_file_owned_by_server_user(
    cli, monkeypatch: pytest.MonkeyPatch, service_folder: Path,
) -> None:  # type: ignore[no-untyped-def]
    config = write_config(service_folder, 'user = "nobody"')
    add = user_parser().parse_args(["user", "add", "alice", "--config", str(config)])
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert add.handler(add) == 0
    info = (service_folder / "users").stat()
    assert (info.st_uid, info.st_mode & 0o777) == (NOBODY, 0o600)


@needs_root
def test_root_only_file_says_what_to_chown(
    cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # type: ignore[no-untyped-def]
    users = tmp_path / "users"  # a folder of root's own group: nobody to give the file to
    add = user_parser().parse_args(["user", "add", "alice", "--users-file", str(users)])
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert add.handler(add) == 0
    assert f"chgrp mailgate {users} && chmod 0640 {users}" in capsys.readouterr().err


def test_concurrent_auth_attempts_cannot_pass_the_lockout() -> None:
    """Issue 21 item 6: 200 AUTH commands at once from one address get at most `max_failures`
    password checks; the rest are refused 454 4.7.0 without a check."""
    import base64
    import threading
    import time

    from mailgate.core.reply import AUTH_FAILED, TEMP_AUTH_FAILURE
    from mailgate.server.authentication import Authentication

    class SlowUsers:
        checks = 0
        lock = threading.Lock()

        def verify(self, user: str, password: str) -> bool:
            with self.lock:
                self.checks += 1
            time.sleep(0.05)  # argon2 takes time: every attempt is in flight together
            return False

    users = SlowUsers()
    tracker = AuthFailureTracker(FakeClock(), max_failures=5, base_delay=0.0, max_delay=0.0)
    plain = base64.b64encode(b"\0alice\0guess").decode()

    async def attempts() -> list:
        return await asyncio.gather(*(
            Authentication(users, tracker, "2001:db8::%x" % i).start("PLAIN", plain) for i in range(200)
        ))

    replies = asyncio.run(attempts())
    assert users.checks == 5
    assert replies.count(AUTH_FAILED) == 5
    assert replies.count(TEMP_AUTH_FAILURE) == 195
    assert tracker.is_locked("2001:db8::1")


def test_cli_add_admin_gives_the_console_role_and_old_lines_read_as_before(
        cli, users_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    """`mailgate user add --admin` (issue 17): the fourth field holds the role; a three-field
    line (every file written before roles existed) is a plain AUTH user."""
    assert cli("add", "root@example.org", "--admin", stdin="pw\n") == 0
    assert cli("add", "bob", stdin="pw\n") == 0
    store = FileUserStore(users_path, hasher=cheap_hasher())
    assert store.has_role("root@example.org", "admin") and not store.has_role("bob", "admin")
    assert store.verify("root@example.org", "pw")
    lines = [line for line in users_path.read_text().splitlines() if not line.startswith("#")]
    assert lines[0].startswith("bob:$argon2") and lines[0].count(":") == 2
    assert lines[1].endswith(":admin")
    capsys.readouterr()
    assert cli("list") == 0
    assert capsys.readouterr().out == "bob\t(login name only)\nroot@example.org\t(login name only)\tadmin\n"


@pytest.mark.parametrize("line", ["eve:$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA::root",
                                  "eve:$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA:a@b.example:admin:x"])
def test_an_unknown_role_is_a_file_error_naming_the_line(users_path: Path, line: str) -> None:
    users_path.write_text(f"# users\n{line}\n")
    with pytest.raises(UserFileError, match=r":2: .*role"):
        FileUserStore(users_path, hasher=cheap_hasher())


def test_cli_add_creates_the_folder_of_a_new_users_file(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The embedded default's ./var/users before the first `serve` (README: add the console's
    admin, then open the console)."""
    users = tmp_path / "var" / "users"
    assert cli("add", "--admin", "admin", "--users-file", str(users), stdin="pw\n") == 0
    assert FileUserStore(users, hasher=cheap_hasher()).has_role("admin", "admin")
