"""Recipient validation against a real OpenLDAP (Debian's slapd), privately started.

Covers found, not found, an alias in proxyAddresses, injection attempts in the address, the
directory stopped (451 4.4.3, never 550 and never an accept), fail-over to a second server,
LDAPS and StartTLS with a trustme certificate (and a wrong CA refused), and the same through
SMTP at RCPT, with the relay tricks still refused.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from mailgate.recipients.cache import LookupCache
from mailgate.recipients.ldap_source import LdapSettings, LdapSource
from mailgate.recipients.source import LookupStatus
from tests.conftest import free_port, require_binary
from tests.support.mailgate_server import InProcessMailgate
from tests.support.receiving import HOSTED, config_text, rcpt_replies
from tests.support.slapd import ADMIN_DN, ADMIN_PASSWORD, BASE_DN, person, start_slapd

pytestmark = pytest.mark.e2e

PEOPLE = [
    person("alice", f"alice@{HOSTED}", f"SMTP:alice@{HOSTED}", f"smtp:a.smith@{HOSTED}"),
    person("bob", f"bob@{HOSTED}"),
]


@pytest.fixture(scope="module")
def slapd(tls_files):
    instance = start_slapd(require_binary("slapd"), PEOPLE, tls=(tls_files["cert"], tls_files["key"], tls_files["ca"]))
    yield instance
    instance.cleanup()


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "bind-password"
    path.write_text(ADMIN_PASSWORD + "\n")
    path.chmod(0o600)
    return str(path)


def source(password_file: str, servers: tuple[str, ...], **overrides) -> LdapSource:
    settings = LdapSettings(
        servers=servers, search_base=BASE_DN, bind_dn=ADMIN_DN, bind_password_file=password_file,
        timeout=2.0, **overrides,
    )
    return LdapSource("directory", settings, LookupCache(positive_ttl=60, negative_ttl=60))


def status(ldap: LdapSource, address: str) -> LookupStatus:
    return asyncio.run(ldap.lookup(address)).status


@pytest.mark.parametrize("address, expected", [
    (f"alice@{HOSTED}", LookupStatus.FOUND),          # primary proxyAddress and mail
    (f"A.Smith@{HOSTED}", LookupStatus.FOUND),        # secondary proxyAddress, other case
    (f"bob@{HOSTED}", LookupStatus.FOUND),            # mail only
    (f"carol@{HOSTED}", LookupStatus.NOT_FOUND),
    (f"*@{HOSTED}", LookupStatus.NOT_FOUND),          # a wildcard would match everyone
    (f"x)(mail=*@{HOSTED}", LookupStatus.NOT_FOUND),  # filter injection
    (f"*)(|(uid=*@{HOSTED}", LookupStatus.NOT_FOUND),
    (f"al\x00ice@{HOSTED}", LookupStatus.NOT_FOUND),  # NUL must not cut the value
    (f"ali*@{HOSTED}", LookupStatus.NOT_FOUND),
])
def test_directory_answers_and_injection_attempts(slapd, password_file, address, expected) -> None:
    ldap = source(password_file, (slapd.uri,))
    try:
        assert status(ldap, address) is expected
    finally:
        ldap.close()


def test_wrong_bind_password_is_unavailable_not_unknown(slapd, tmp_path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password")
    ldap = source(str(wrong), (slapd.uri,))
    try:
        assert status(ldap, f"alice@{HOSTED}") is LookupStatus.UNAVAILABLE
    finally:
        ldap.close()


def test_fail_over_to_the_next_server(slapd, password_file) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}"
    ldap = source(password_file, (dead, slapd.uri))
    try:
        assert status(ldap, f"alice@{HOSTED}") is LookupStatus.FOUND
    finally:
        ldap.close()


def test_ldaps_and_starttls_verify_the_certificate(slapd, password_file, tls_files, tmp_path) -> None:
    for servers, start_tls in (((slapd.tls_uri,), False), ((f"ldap://localhost:{slapd.port}",), True)):
        ldap = source(password_file, servers, start_tls=start_tls, ca_file=tls_files["ca"])
        try:
            assert status(ldap, f"alice@{HOSTED}") is LookupStatus.FOUND
        finally:
            ldap.close()
    import trustme
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    for servers, start_tls in (((slapd.tls_uri,), False), ((f"ldap://localhost:{slapd.port}",), True)):
        ldap = source(password_file, servers, start_tls=start_tls, ca_file=str(other_ca))
        try:
            assert status(ldap, f"alice@{HOSTED}") is LookupStatus.UNAVAILABLE
        finally:
            ldap.close()


# --- through SMTP -------------------------------------------------------------------------------
def ldap_config(tmp_path, uri: str, password_file: str) -> str:
    text = config_text(tmp_path).replace(
        f'[[domain]]\nname = "{HOSTED}"\n', f'[[domain]]\nname = "{HOSTED}"\nrecipient_sources = ["directory"]\n'
    )
    return text + f"""
[[recipient_source]]
name = "directory"
type = "ldap"
servers = ["{uri}"]
bind_dn = "{ADMIN_DN}"
bind_password_file = "{password_file}"
search_base = "{BASE_DN}"
timeout = "2s"
negative_ttl = "0s"
"""


def test_rcpt_is_checked_against_the_directory_and_fails_closed_when_it_stops(tmp_path, password_file, tls_files) -> None:
    slapd = start_slapd(require_binary("slapd"), PEOPLE)
    try:
        with InProcessMailgate(ldap_config(tmp_path, slapd.uri, password_file)) as mg:
            port = mg.port("mx")
            replies = mg.call(rcpt_replies(port, [
                f"alice@{HOSTED}", f"nobody@{HOSTED}", f"user%other.test@{HOSTED}", "victim@external.test",
                f"*@{HOSTED}",
            ]))
            assert replies[0].startswith("250")
            assert replies[1] == f"550 5.1.1 <nobody@{HOSTED}>: Recipient address rejected: User unknown"
            assert replies[2].startswith("550 5.7.1")  # percent hack: refused before any lookup
            assert replies[3].startswith("550 5.7.1 Unable to relay")
            assert replies[4].startswith("550 5.1.1")
            slapd.stop()
            replies = mg.call(rcpt_replies(port, [f"nobody@{HOSTED}", f"carol@{HOSTED}"]))
            assert all(reply.startswith("451 4.4.3") for reply in replies), replies
            # alice was found before: the positive cache still answers while the directory is down
            assert mg.call(rcpt_replies(port, [f"alice@{HOSTED}"]))[0].startswith("250")
            slapd.start()
            assert mg.call(rcpt_replies(port, [f"carol@{HOSTED}"]))[0].startswith("550 5.1.1")
            exposed = mg.app.metrics.render().decode()
            for labels, count in (('cache="miss",result="found"', 1), ('cache="hit",result="found"', 1),
                                  ('cache="miss",result="not_found"', 3), ('cache="miss",result="unavailable"', 2)):
                line = f'mailgate_recipient_lookups_total{{{labels},source="directory"}} {count}.0'
                assert line in exposed, exposed
    finally:
        slapd.cleanup()


# --- the tools ----------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailgate", *args], capture_output=True, text=True, timeout=60)


def test_recipients_check_and_explain_show_the_deciding_source(slapd, password_file, tmp_path) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text(ldap_config(tmp_path, slapd.uri, password_file))
    found = run_cli("recipients", "check", "--config", str(config), f"alice@{HOSTED}")
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines() == [f"<alice@{HOSTED}>: accepted", "  directory: found"]
    unknown = run_cli("recipients", "check", "--config", str(config), f"alice@{HOSTED}", f"nobody@{HOSTED}")
    assert unknown.returncode == 1
    assert f"<nobody@{HOSTED}>: 550 5.1.1 <nobody@{HOSTED}>: Recipient address rejected: User unknown" in unknown.stdout
    outside = run_cli("recipients", "check", "--config", str(config), "someone@external.test")
    assert outside.returncode == 2 and outside.stderr.strip() == (
        "mailgate recipients: someone@external.test: external.test is not a hosted domain")

    explained = run_cli("explain", "--config", str(config), "--client", "192.0.2.7", "--from", "a@external.test",
                        "--to", f"nobody@{HOSTED}", "--to", f"alice@{HOSTED}", "--to", f"alice@{HOSTED}")
    assert explained.returncode == 1, explained.stderr
    text = explained.stdout
    assert "decided by: recipient_source:directory" in text
    assert "hosted_domain:permit -> recipient_source:directory:not_found" in text
    assert "recipient_source:directory:found (cache)" in text  # the second alice came from the cache

    slapd.stop()
    try:
        down = run_cli("recipients", "check", "--config", str(config), f"alice@{HOSTED}")
        assert down.returncode == 1
        assert down.stdout.splitlines()[0].startswith(f"<alice@{HOSTED}>: 451 4.4.3")
        assert "directory: unavailable (no directory server reachable" in down.stdout
    finally:
        slapd.start()
