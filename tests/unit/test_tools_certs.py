"""tools/certs.py and `mailgate cert`: host-name matching (RFC 6125), key/CSR and self-signed
certificates, and the show round trip."""

from __future__ import annotations

import argparse
import datetime
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from mailgate.cli import cert_cmd
from mailgate.tools.certs import (
    describe, load_certificates, make_csr, make_self_signed, name_matches, new_private_key,
)

pytestmark = pytest.mark.timeout(60)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mailgate")
    cert_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture(scope="module")
def wildcard_cert() -> x509.Certificate:
    return make_self_signed(new_private_key(), "mx.example.com", ["*.example.org", "192.0.2.7", "2001:db8::7"])


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("mx.example.com", True),
        ("MX.Example.COM.", True),  # case-insensitive, final dot ignored
        ("a.example.org", True),  # wildcard covers one label
        ("a.b.example.org", False),  # ... never two (RFC 6125 §6.4.3)
        ("example.org", False),  # ... nor the bare domain
        ("192.0.2.7", True),
        ("[192.0.2.7]", True),
        ("2001:db8:0::7", True),  # same IPv6 address, other spelling
        ("192.0.2.8", False),
        ("other.example.com", False),
    ],
)
def test_name_matching(wildcard_cert: x509.Certificate, host: str, expected: bool) -> None:
    assert name_matches(wildcard_cert, host) is expected


def test_common_name_is_used_only_without_dns_sans() -> None:
    key = new_private_key()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "legacy.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    assert name_matches(cert, "legacy.example")
    with_san = make_self_signed(key, "cn-only.example", [])
    assert name_matches(with_san, "cn-only.example")  # the CN is copied into the SANs


def test_describe_reports_expiry_and_self_signed(wildcard_cert: x509.Certificate) -> None:
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=400)
    info = describe(wildcard_cert, "a.example.org", now=later)
    assert info.expired and info.days_left < 0
    assert info.self_signed
    assert info.subject == "CN=mx.example.com"
    assert info.dns_names == ["mx.example.com", "*.example.org"]
    assert info.ip_addresses == ["192.0.2.7", "2001:db8::7"]
    assert info.name_matches is True
    assert not describe(wildcard_cert).expired
    assert describe(wildcard_cert).name_matches is None


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_csr_carries_cn_and_sans_and_is_signed(key_type: str) -> None:
    csr = make_csr(new_private_key(key_type), "mx.example.com", ["mail.example.com", "198.51.100.1"])
    assert csr.is_signature_valid
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["mx.example.com", "mail.example.com"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["198.51.100.1"]


def test_unknown_key_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown key type"):
        new_private_key("dsa")


def test_cli_selfsigned_then_show_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["cert", "selfsigned", "--cn", "mx.test", "--san", "127.0.0.1", "--days", "30",
                "--out-dir", str(tmp_path)]) == 0
    key, pem = tmp_path / "mx.test.key", tmp_path / "mx.test.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = load_certificates(pem.read_bytes())[0]
    assert 29 <= describe(cert).days_left <= 30
    capsys.readouterr()

    assert run(["cert", "show", str(pem), "--host", "127.0.0.1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown[0]["subject"] == "CN=mx.test" and shown[0]["name_matches"] is True

    assert run(["cert", "show", str(pem), "--host", "elsewhere.test"]) == 1
    assert "does NOT match" in capsys.readouterr().out


def test_cli_request_writes_key_and_csr_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["cert", "request", "--cn", "mx.example.com", "--san", "mail.example.com", "--out-dir", str(tmp_path)]
    assert run(argv) == 0
    csr = x509.load_pem_x509_csr((tmp_path / "mx.example.com.csr").read_bytes())
    assert csr.subject.rfc4514_string() == "CN=mx.example.com"
    first_key = (tmp_path / "mx.example.com.key").read_bytes()

    assert run(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "mx.example.com.key").read_bytes() == first_key
    assert run([*argv, "--force"]) == 0
    assert (tmp_path / "mx.example.com.key").read_bytes() != first_key


def test_cli_creates_the_out_dir(tmp_path: Path) -> None:
    """Issue 20 item 10: `--out-dir` naming a folder that does not exist yet failed."""
    out_dir = tmp_path / "tls" / "new"
    assert run(["cert", "selfsigned", "--cn", "mx.test", "--out-dir", str(out_dir)]) == 0
    assert (out_dir / "mx.test.pem").exists() and stat.S_IMODE((out_dir / "mx.test.key").stat().st_mode) == 0o600


def test_cli_show_refuses_what_is_not_a_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    assert run(["cert", "show", str(junk)]) == 2
    assert "not a PEM or DER certificate" in capsys.readouterr().err
    assert run(["cert", "show", str(tmp_path / "missing.pem")]) == 2


def test_cli_selfsigned_prints_the_listener_keys_to_paste(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Walk-through of docs/operations.md on a clean root: the files are named after the CN, not
    as in docs/example.toml, so the command says which keys to set and how the service reads the key."""
    assert run(["cert", "selfsigned", "--cn", "mx1.example.com", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f'cert_file = "{tmp_path.resolve() / "mx1.example.com.pem"}"' in out
    assert f'key_file = "{tmp_path.resolve() / "mx1.example.com.key"}"' in out
    assert f"chmod 0640 {tmp_path.resolve() / 'mx1.example.com.key'}" in out
