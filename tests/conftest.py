"""Shared fixtures: TLS material made by trustme, free loopback ports, e2e gating.

In CI (`MAILGATE_REQUIRE_E2E=1`, set by .ci/run) a missing real peer fails the test instead of
skipping it, so a green run always means the real peers were exercised.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest
import trustme

from tests.support import peers


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def require_binary(name: str) -> str:
    """Path of a real peer's binary; skip locally, fail in CI, when it is missing."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if candidate and os.path.exists(candidate):
            return candidate
    unavailable(f"{name} is not installed (.ci/run installs it)")


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI (MAILGATE_REQUIRE_E2E): a real peer or facility is missing."""
    if os.environ.get("MAILGATE_REQUIRE_E2E"):
        pytest.fail(reason)
    pytest.skip(reason)


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI every real peer capability must be there: stop at once with one line naming the
    missing Debian package, rather than failing tests one by one with a peer's own message."""
    if os.environ.get("MAILGATE_REQUIRE_E2E"):
        absent = peers.missing()
        if absent:
            pytest.exit(peers.describe(absent), returncode=pytest.ExitCode.USAGE_ERROR)


def require_capabilities(capabilities: tuple[peers.Capability, ...]) -> None:
    """Skip locally, fail in CI, when a capability a test uses is missing (one line, the package)."""
    absent = peers.missing(capabilities)
    if absent:
        unavailable(peers.describe(absent))


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_files(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A server certificate for mx.test / localhost / 127.0.0.1 and the CA that signed it."""
    cert = tls_ca.issue_cert("mx.test", "localhost", "127.0.0.1", "::1")
    directory = tmp_path_factory.mktemp("tls")
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    ca_path = directory / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        with open(cert_path, "ab") as handle:
            handle.write(extra.bytes())
    cert.private_key_pem.write_to_path(str(key_path))
    tls_ca.cert_pem.write_to_path(str(ca_path))
    return {"cert": str(cert_path), "key": str(key_path), "ca": str(ca_path)}


@pytest.fixture(autouse=True)
def no_host_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Commands run in a test without --config never read this machine's /etc/mailgate/mailgate.toml
    (an admin walking through docs/operations.md may have written one): the default path is a
    file that does not exist, so they fall back to the embedded default as on a clean machine."""
    from mailgate.cli import config_option

    monkeypatch.setattr(config_option, "DEFAULT_CONFIG", str(tmp_path_factory.getbasetemp() / "no-such-mailgate.toml"))


@pytest.fixture(scope="session")
def postgres_server():  # type: ignore[no-untyped-def]
    """One private PostgreSQL for the session (tests/support/postgres.py); tests take a fresh
    database each with `postgres_server.new_database()`. Skips locally, fails in CI, if absent."""
    from tests.support.postgres import bin_dir, start_postgres

    if bin_dir() is None:
        unavailable("PostgreSQL is not installed (Debian package postgresql; .ci/run installs it)")
    server = start_postgres()
    yield server
    server.cleanup()
