"""`mailgate dkim keygen|check` as an admin runs them, with the records served by a real DNS
server on loopback: the key written 0600, the record printed, then published, missing, wrong,
revoked and unreachable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailgate.auth.dkim_keys import generate_private_key, key_from_bytes
from mailgate.cli.main import main
from tests.support.dns_server import LoopbackDnsServer

pytestmark = pytest.mark.timeout(60)


def _published(output: str) -> str:
    """The TXT value from keygen's zone line: its quoted strings joined (RFC 6376 §3.6.2.2)."""
    line = next(l for l in output.splitlines() if "IN TXT" in l)
    return "".join(re.findall(r'"([^"]*)"', line))


def _check(capsys, server: LoopbackDnsServer, key_file: Path, selector: str = "s2026") -> tuple[int, str]:
    code = main(["dkim", "check", "example.com", "--selector", selector, "--key-file", str(key_file),
                 "--nameserver", "127.0.0.1", "--dns-port", str(server.port)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_keygen_then_check_against_published_missing_and_wrong_records(tmp_path: Path, capsys, kind: str) -> None:
    key_file = tmp_path / "dkim" / "example.com.key"
    assert main(["dkim", "keygen", "Example.com", "--selector", "s2026", "--type", kind,
                 "--key-file", str(key_file)]) == 0
    output = capsys.readouterr().out
    assert key_file.stat().st_mode & 0o777 == 0o600
    record = _published(output)
    assert record.startswith(f"v=DKIM1; k={kind}; p=")
    assert 'selector = "s2026"' in output and str(key_file) in output

    other = key_from_bytes(generate_private_key(kind), "example.com", "s2026").txt_record()
    zone = {"s2026._domainkey.example.com": {"TXT": [record]},
            "wrong._domainkey.example.com": {"TXT": [other]},
            "revoked._domainkey.example.com": {"TXT": [f"v=DKIM1; k={kind}; p="]},
            "slow._domainkey.example.com": "TIMEOUT"}
    with LoopbackDnsServer(zone) as server:
        assert _check(capsys, server, key_file) == (0, "s2026._domainkey.example.com "
                                                      f"({kind}): OK, the published record carries this key\n")
        code, text = _check(capsys, server, key_file, "wrong")
        assert code == 1 and "MISMATCH: p= is a different public key" in text
        code, text = _check(capsys, server, key_file, "revoked")
        assert code == 1 and "revoked" in text
        code, text = _check(capsys, server, key_file, "absent")
        assert code == 1 and "MISSING" in text and "absent._domainkey.example.com. IN TXT" in text


def test_keygen_refuses_to_overwrite_and_bad_input(tmp_path: Path, capsys) -> None:
    key_file = tmp_path / "k.pem"
    key_file.write_text("precious")
    assert main(["dkim", "keygen", "example.com", "--selector", "s1", "--key-file", str(key_file)]) == 1
    assert key_file.read_text() == "precious"
    assert "never overwritten" in capsys.readouterr().err
    assert main(["dkim", "keygen", "exa mple..com", "--selector", "s1", "--key-file", str(tmp_path / "x")]) == 2
    assert main(["dkim", "keygen", "example.com", "--selector", "s 1;", "--key-file", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_check_refuses_an_open_key_file_and_reports_dns_timeout(tmp_path: Path, capsys) -> None:
    key_file = tmp_path / "k.pem"
    assert main(["dkim", "keygen", "example.com", "--selector", "slow", "--key-file", str(key_file)]) == 0
    capsys.readouterr()
    key_file.chmod(0o644)
    with LoopbackDnsServer({"slow._domainkey.example.com": "TIMEOUT"}) as server:
        code, text = _check(capsys, server, key_file, "slow")
        assert code == 1 and "mode 0644" in text and "Traceback" not in text
        key_file.chmod(0o600)
        # the time-out is the configuration's dns.timeout (5 s): temporary, exit 3
        code, text = _check(capsys, server, key_file, "slow")
        assert code == 3 and "DNS failed temporarily" in text
