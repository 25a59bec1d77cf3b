"""DKIM keys and signing, without sockets: key files (mode, overwrite, strength), the published
record, key choice per From: domain, the oversigned header list, and a careless configuration."""

from __future__ import annotations

import os
from pathlib import Path

import dkim
import pytest

from mailgate.app_config import StartupError, build_signer
from mailgate.auth.dkim_keys import (
    DkimKeyError, generate_private_key, key_from_bytes, load_key, parse_key_record, record_matches,
    write_private_key,
)
from mailgate.auth.dkim_sign import DkimSigner, SigningKey
from mailgate.config.loader import load_text

RSA_PEM = generate_private_key("rsa")
ED_PEM = generate_private_key("ed25519")
MESSAGE = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: hello\r\n"
    b"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nHi Bob.\r\n"
)


def _signer(*keys, subdomains: bool = True) -> DkimSigner:
    return DkimSigner([SigningKey(k, subdomains) for k in keys], ["from", "to", "subject", "date", "message-id"],
                      ["from", "subject", "to", "date", "message-id", "cc"])


def test_written_key_has_mode_0600_and_is_never_overwritten(tmp_path: Path) -> None:
    os.umask(0o022)
    path = tmp_path / "keys" / "k.pem"
    write_private_key(path, RSA_PEM)
    assert (path.stat().st_mode & 0o777) == 0o600
    with pytest.raises(DkimKeyError, match="never overwritten"):
        write_private_key(path, ED_PEM)
    assert path.read_bytes() == RSA_PEM


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k.pem"
    write_private_key(path, RSA_PEM)
    path.chmod(mode)
    with pytest.raises(DkimKeyError, match=f"mode {mode:04o}"):
        load_key(path, "example.com", "s1")


# A 512-bit RSA key (too weak to sign with, RFC 8301 §3.2); generated for this test only.
WEAK_RSA_PEM = b"""-----BEGIN PRIVATE KEY-----
MIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEAwzbKr0wnGtxWJXph
bMzTIOlA08tnqMW0EPw9zX7fqPqjTN0GuzTuFtiC9/muqxohsGmgcwcMz4HrsdyO
657ftwIDAQABAkAhfUXaOts+jWwt88fA7YaOz9UyQGPhHUGd5FgJ5+kgyMmahFrY
RonuzmbmOVN3vzx1W2YWMHXZSqBdKpqjnvwRAiEA+BuaCudrfLgowcMFW0lFvjV6
5FoBzsqopvOGMHz8VR8CIQDJbHbA+dlgfVmIUFdbttX0fLBnZ1vP14awymIfWttK
aQIgK3yzCFw9s9OXmTa0lqaGKeu3yZSZIoTVAMZIa/FMTSMCIQDCweVxYiQVcB6J
92UAgSEPbSEEWqQjqznI52dI+gjfQQIhANLun4oGXdNnYXuBPWi6bnUABRFHCOk5
UrMVTnOijnso
-----END PRIVATE KEY-----
"""


def test_weak_rsa_key_and_garbage_are_refused() -> None:
    with pytest.raises(DkimKeyError, match="RFC 8301"):
        key_from_bytes(WEAK_RSA_PEM, "example.com", "s1")
    with pytest.raises(DkimKeyError, match="not a PEM"):
        key_from_bytes(b"hello", "example.com", "s1")


def test_record_is_split_into_255_octet_strings_and_matches_its_key() -> None:
    key = key_from_bytes(RSA_PEM, "example.com", "s1")
    line = key.zone_line()
    assert line.startswith("s1._domainkey.example.com. IN TXT (")
    strings = line.split("(", 1)[1].rsplit(")", 1)[0].strip().split('" "')
    assert all(len(s.strip('"')) <= 255 for s in strings) and len(strings) == 2
    assert "".join(s.strip('"') for s in strings) == key.txt_record()
    assert record_matches(key, key.txt_record()) == ""
    other = key_from_bytes(generate_private_key("rsa"), "example.com", "s1")
    assert "different public key" in record_matches(key, other.txt_record())
    assert "revoked" in record_matches(key, "v=DKIM1; k=rsa; p=")
    ed = key_from_bytes(ED_PEM, "example.com", "e1")
    assert "k=ed25519" in ed.txt_record() and "but the key is rsa" in record_matches(key, ed.txt_record())
    assert parse_key_record("v=DKIM1; k=rsa; p=AB CD")["p"] == "ABCD"


def test_dknewkey_ed25519_seed_format_loads() -> None:
    import base64
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    seed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    key = key_from_bytes(base64.b64encode(seed) + b"\n", "example.com", "e1")
    assert key.key_type == "ed25519" and len(base64.b64decode(key.public_key)) == 32  # RFC 8463 §4


def test_header_list_oversigns_present_and_absent_fields() -> None:
    signer = _signer(key_from_bytes(RSA_PEM, "example.com", "s1"))
    names = signer.header_list(MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n")
    assert names.count(b"from") == 2 and names.count(b"subject") == 2
    assert names.count(b"cc") == 1  # absent, signed once: adding a Cc breaks the signature


def test_key_choice_by_from_domain_and_parent() -> None:
    key = key_from_bytes(RSA_PEM, "example.com", "s1")
    signer = _signer(key)
    assert signer.keys_for("example.com") == [key]
    assert signer.keys_for("mail.example.com") == [key]
    assert signer.keys_for("example.org") == []
    assert _signer(key, subdomains=False).keys_for("mail.example.com") == []
    signature, _ = signer.sign(MESSAGE.replace(b"alice@example.com", b"alice@other.test"))
    assert signature == b""


def test_message_with_two_from_fields_is_not_signed() -> None:
    signer = _signer(key_from_bytes(RSA_PEM, "example.com", "s1"))
    signature, reason = signer.sign(b"From: a@example.com\r\n" + MESSAGE)
    assert signature == b"" and "single From" in reason


def test_oversigned_from_breaks_when_a_from_is_added_above() -> None:
    key = key_from_bytes(RSA_PEM, "example.com", "s1")
    signature, domain = _signer(key).sign(MESSAGE)
    assert domain == "example.com"
    records = {f"{key.record_name}.".encode(): key.txt_record().encode()}
    lookup = lambda name, timeout=5: records.get(name)  # noqa: E731
    assert dkim.DKIM(signature + MESSAGE).verify(dnsfunc=lookup)
    forged = signature + b"From: ceo@example.com\r\n" + MESSAGE
    assert not dkim.DKIM(forged).verify(dnsfunc=lookup)


def test_dual_signatures_share_one_body_hash_and_each_verifies() -> None:
    """The body is canonicalised once for both signatures: each must still verify on its own, with
    the tags dkimpy's own signer writes, and a changed body or header must break both."""
    rsa_key, ed_key = key_from_bytes(RSA_PEM, "example.com", "r1"), key_from_bytes(ED_PEM, "example.com", "e1")
    signer = _signer(rsa_key, ed_key)
    signatures, _ = signer.sign(MESSAGE)
    records = {f"{k.record_name}.".encode(): k.txt_record().encode() for k in (rsa_key, ed_key)}
    lookup = lambda name, timeout=5: records.get(name)  # noqa: E731
    signed = signatures + MESSAGE
    verifier = dkim.DKIM(signed)
    assert verifier.verify(idx=0, dnsfunc=lookup) and verifier.verify(idx=1, dnsfunc=lookup)
    tags = [dkim.util.parse_tag_value(value) for name, value in verifier.headers if name == b"DKIM-Signature"]
    assert [t[b"a"] for t in tags] == [b"rsa-sha256", b"ed25519-sha256"]
    assert tags[0][b"bh"] == tags[1][b"bh"] and all(t[b"c"] == b"relaxed/relaxed" for t in tags)
    reference = dkim.DKIM(MESSAGE, linesep=b"\r\n").sign(
        b"r1", b"example.com", rsa_key.signing_key, canonicalize=(b"relaxed", b"relaxed"),
        include_headers=signer.header_list(MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n"))
    expected = dkim.util.parse_tag_value(reference.split(b":", 1)[1])
    assert sorted(expected) == sorted(tags[0]) and expected[b"bh"] == tags[0][b"bh"] and expected[b"h"] == tags[0][b"h"]
    for changed in (signed.replace(b"Hi Bob.", b"Hi Bob!"), signed.replace(b"Subject: hello", b"Subject: hullo")):
        assert not _verifies(changed, 0, lookup) and not _verifies(changed, 1, lookup)


def _verifies(message: bytes, index: int, lookup) -> bool:
    try:
        return dkim.DKIM(message).verify(idx=index, dnsfunc=lookup)
    except dkim.ValidationError:  # dkimpy raises on a body hash mismatch
        return False


def _config(tmp_path: Path, entries: str) -> str:
    return (f'[server]\nspool_dir = "{tmp_path}/spool"\n'
            '[[listener]]\nname = "mx"\naddress = "127.0.0.1:2525"\ntls = "none"\n' + entries)


def test_configuration_refuses_open_key_file_and_two_active_keys_of_a_type(tmp_path: Path) -> None:
    for name, pem in (("a", RSA_PEM), ("b", generate_private_key("rsa")), ("c", ED_PEM)):
        write_private_key(tmp_path / name, pem)
    (tmp_path / "c").chmod(0o644)
    text = _config(tmp_path, "".join(
        f'[[dkim_key]]\ndomain = "example.com"\nselector = "{n}"\nkey_file = "{tmp_path / n}"\n' for n in "abc"))
    with pytest.raises(StartupError) as error:
        build_signer(load_text(text))
    message = str(error.value)
    assert "dkim_key[1].active: a second active rsa key" in message
    assert "dkim_key[2].key_file" in message and "mode 0644" in message


def test_inactive_selector_is_kept_but_does_not_sign(tmp_path: Path) -> None:
    write_private_key(tmp_path / "old", RSA_PEM)
    write_private_key(tmp_path / "new", generate_private_key("rsa"))
    text = _config(tmp_path, (
        f'[[dkim_key]]\ndomain = "example.com"\nselector = "old"\nkey_file = "{tmp_path / "old"}"\nactive = false\n'
        f'[[dkim_key]]\ndomain = "example.com"\nselector = "new"\nkey_file = "{tmp_path / "new"}"\n'))
    signer = build_signer(load_text(text))
    assert [k.selector for k in signer.keys_for("example.com")] == ["new"]


def test_openssl_rsa_primitive_gives_dkimpys_bytes() -> None:
    import hashlib
    from dkim.crypto import RSASSA_PKCS1_v1_5_sign, parse_pem_private_key
    from mailgate.auth.rsa_openssl import rsassa_pkcs1_v1_5_sign
    numbers = parse_pem_private_key(key_from_bytes(RSA_PEM, "example.com", "s1").signing_key)
    for data in (b"", b"header hash input"):
        digest = hashlib.sha256(data)
        assert rsassa_pkcs1_v1_5_sign(digest, numbers) == RSASSA_PKCS1_v1_5_sign(digest, numbers)
    assert dkim.RSASSA_PKCS1_v1_5_sign is rsassa_pkcs1_v1_5_sign  # installed by dkim_sign
