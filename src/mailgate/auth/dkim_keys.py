"""DKIM keys: generating, loading and publishing them (RFC 6376 §3.6.1, RFC 8463 §4, RFC 8301).

Owns: making a new key (RSA 2048 bits or Ed25519) and writing it with mode 0600 without ever
overwriting a file; loading a key file and refusing one that group or others may read; the DNS
TXT record that publishes a key (`v=DKIM1; k=...; p=...`, split into 255-octet strings, RFC 6376
§3.6.2.2) and the comparison of a published record with a key (`mailgate dkim check`).
Must not: sign or verify (dkimpy does, in dkim_sign.py and dkim_verify.py) or look anything up.

Key files are PEM (PKCS#1 or PKCS#8) for both types, as `openssl` and OpenDKIM write them; an
Ed25519 key may also be the base64 seed that dkimpy's `dknewkey` writes.
"""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailgate.auth.dkim_key_types import DEFAULT_RSA_BITS, ED25519, KEY_TYPES, MIN_RSA_BITS, RSA
# RFC 6376 §3.6.2.2: a TXT character-string holds at most 255 octets.
TXT_STRING_LIMIT = 255
ALGORITHMS = {RSA: "rsa-sha256", ED25519: "ed25519-sha256"}


class DkimKeyError(Exception):
    """A key file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    key_type: str  # rsa | ed25519
    signing_key: bytes  # what dkimpy's signer takes: PKCS#1 PEM (RSA) or the base64 seed (Ed25519)
    public_key: str  # the p= value (RFC 6376 §3.6.1; RFC 8463 §4: the raw 32-octet Ed25519 key)
    path: str = ""

    @property
    def algorithm(self) -> str:
        return ALGORITHMS[self.key_type]

    @property
    def record_name(self) -> str:
        """RFC 6376 §3.6.2.1: selector._domainkey.domain"""
        return f"{self.selector}._domainkey.{self.domain}"

    def txt_record(self) -> str:
        return f"v=DKIM1; k={self.key_type}; p={self.public_key}"

    def zone_line(self) -> str:
        """The record as a zone-file line, in 255-octet strings (RFC 6376 §3.6.2.2)."""
        text = self.txt_record()
        parts = [text[i:i + TXT_STRING_LIMIT] for i in range(0, len(text), TXT_STRING_LIMIT)]
        quoted = " ".join(f'"{part}"' for part in parts)
        return f"{self.record_name}. IN TXT ( {quoted} )"


def generate_private_key(key_type: str, bits: int = DEFAULT_RSA_BITS) -> bytes:
    """A new private key in PEM (PKCS#8)."""
    if key_type == RSA:
        if bits < MIN_RSA_BITS:
            raise DkimKeyError(f"RSA keys must have at least {MIN_RSA_BITS} bits (RFC 8301 §3.2)")
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif key_type == ED25519:
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise DkimKeyError(f"unknown key type {key_type!r}: use one of {', '.join(KEY_TYPES)}")
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private_key(path: str | Path, pem: bytes) -> None:
    """Create `path` with mode 0600 (never replacing a file) and make it durable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise DkimKeyError(f"{path}: exists; a key is never overwritten (choose a new selector)") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_key(path: str | Path, domain: str, selector: str) -> DkimKey:
    """The key in `path`; DkimKeyError when it is unreadable, malformed, too weak or too open."""
    path = Path(path)
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"{path}: {exc.strerror or exc}") from None
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise DkimKeyError(f"{path}: mode {mode:04o} lets group or others read the private key (chmod 600 it)")
    return key_from_bytes(data, domain, selector, str(path))


def key_from_bytes(data: bytes, domain: str, selector: str, path: str = "") -> DkimKey:
    private = _parse_private(data, path)
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise DkimKeyError(f"{path}: RSA key of {private.key_size} bits; at least {MIN_RSA_BITS} (RFC 8301 §3.2)")
        signing = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return DkimKey(domain, selector, RSA, signing, base64.b64encode(public).decode(), path)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        seed = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return DkimKey(domain, selector, ED25519, base64.b64encode(seed), base64.b64encode(public).decode(), path)
    raise DkimKeyError(f"{path}: neither an RSA nor an Ed25519 private key")


def _parse_private(data: bytes, path: str):
    if b"-----BEGIN" in data:
        try:
            return serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise DkimKeyError(f"{path}: not a usable PEM private key ({exc})") from None
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise DkimKeyError(f"{path}: not a PEM private key nor a base64 Ed25519 seed")
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def parse_key_record(text: str) -> dict[str, str]:
    """The tags of a DKIM key record (RFC 6376 §3.6.1), names lower case, spaces removed."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags[name.strip().lower()] = "".join(value.split())
    return tags


def record_matches(key: DkimKey, text: str) -> str:
    """"" when the published record `text` carries this key; otherwise what is wrong with it."""
    tags = parse_key_record(text)
    if tags.get("v", "DKIM1") != "DKIM1":
        return f"v={tags['v']}, not DKIM1"
    published_type = tags.get("k", RSA).lower()  # RFC 6376 §3.6.1: k= defaults to rsa
    if published_type != key.key_type:
        return f"k={published_type}, but the key is {key.key_type}"
    if not tags.get("p"):
        return "p= is empty: the key is revoked (RFC 6376 §3.6.1)"
    if tags["p"] != key.public_key:
        return "p= is a different public key"
    return ""
