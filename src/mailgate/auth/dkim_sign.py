"""DKIM signing of outbound mail (RFC 6376 §5; Ed25519, RFC 8463), with dkimpy.

Owns: choosing the active keys for the From: domain (the domain itself, or the nearest parent
domain with a key that covers subdomains, which DMARC's relaxed alignment accepts), the header
list of each signature (the configured set as present in the message, the oversigned names once
more than they occur so that an added copy breaks the signature, RFC 6376 §8.15), and the
signatures themselves, relaxed/relaxed (RFC 6376 §3.4), one per active key: rsa-sha256 and
ed25519-sha256 side by side (RFC 8463 §1). Must not: decide whether a message is signed at all
(only internal mail is, the caller knows the origin), read files or touch the event loop (it is
CPU work, the caller runs it in a thread).

Every step of a signature is dkimpy's (message parsing, relaxed canonicalisation of body and
headers, the header hash, folding, the b= value); what this module does itself is the work dkimpy's
`DKIM.sign()` would repeat for every signature of one message: it parses each private key once, when
the signer is built, instead of at every signature (a PEM parse took as long as canonicalising a
4 KiB body), and canonicalises and hashes the body once for all signatures that use the same hash
(RSA and Ed25519 both use SHA-256). The tag list is the one `DKIM.sign()` writes (RFC 6376 §3.5).
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import dkim
import nacl.encoding
import nacl.signing
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import HASH_ALGORITHMS, parse_pem_private_key

from mailgate.auth import rsa_openssl
from mailgate.auth.dkim_keys import DkimKey
from mailgate.auth.headers import fields, from_domains, head_of

rsa_openssl.install()

CANONICALIZATION = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")  # RFC 6376 §3.4.2, §3.4.4

@dataclass(frozen=True)
class SigningKey:
    key: DkimKey
    subdomains: bool = True


@dataclass(frozen=True)
class _ParsedKey:
    """A key as dkimpy's signing step takes it, parsed once."""

    key: DkimKey
    algorithm: bytes  # the a= tag
    private: object  # dkimpy's RSA key dictionary, or a nacl SigningKey for Ed25519

    @classmethod
    def of(cls, key: DkimKey) -> _ParsedKey:
        if key.key_type == "ed25519":
            private = nacl.signing.SigningKey(key.signing_key, encoder=nacl.encoding.Base64Encoder)
        else:
            private = parse_pem_private_key(key.signing_key)
        return cls(key, key.algorithm.encode("ascii"), private)


class DkimSigner:
    def __init__(
        self, keys: Iterable[SigningKey], signed_headers: Iterable[str], oversigned_headers: Iterable[str]
    ) -> None:
        self._by_domain: dict[str, list[SigningKey]] = {}
        self._parsed: dict[DkimKey, _ParsedKey] = {}
        for entry in keys:
            self._by_domain.setdefault(entry.key.domain, []).append(entry)
            self._parsed[entry.key] = _ParsedKey.of(entry.key)
        self._oversigned = tuple(dict.fromkeys(h.lower() for h in oversigned_headers))
        # From is always signed (RFC 6376 §5.4) and oversigned (the DMARC identifier).
        names = ["from", *(h.lower() for h in signed_headers), *self._oversigned]
        self._signed = tuple(dict.fromkeys(names))
        self._oversigned = tuple(dict.fromkeys(["from", *self._oversigned]))

    def keys_for(self, domain: str) -> list[DkimKey]:
        """The active keys for `domain`: its own, else the nearest parent's that covers subdomains."""
        if domain in self._by_domain:
            return [entry.key for entry in self._by_domain[domain]]
        labels = domain.split(".")
        for start in range(1, len(labels) - 1):
            parent = ".".join(labels[start:])
            entries = [entry for entry in self._by_domain.get(parent, []) if entry.subdomains]
            if entries:
                return [entry.key for entry in entries]
        return []

    def header_list(self, head: bytes) -> list[bytes]:
        present = Counter(name for name, _ in fields(head))
        names: list[str] = []
        for name in self._signed:
            extra = 1 if name in self._oversigned else 0
            names.extend([name] * (present[name] + extra))
        return [name.encode("ascii") for name in names]

    def sign(self, message: bytes) -> tuple[bytes, str]:
        """(DKIM-Signature fields to prepend, the d= domain) or (b"", reason) when not signed."""
        head = head_of(message)
        count, domains = from_domains(head)
        if count != 1 or not domains or not domains[0]:
            return b"", "no single From: field with a domain"
        keys = self.keys_for(domains[0])
        if not keys:
            return b"", f"no key for {domains[0]}"
        include = self.header_list(head)
        message_view = dkim.DKIM(message, linesep=b"\r\n")
        body = CANONICALIZATION.canonicalize_body(message_view.body)
        body_hashes: dict[bytes, bytes] = {}
        signatures = []
        for key in keys:
            parsed = self._parsed[key]
            hasher = HASH_ALGORITHMS[parsed.algorithm]
            if parsed.algorithm not in body_hashes:
                body_hashes[parsed.algorithm] = base64.b64encode(hasher(body).digest())
            signatures.append(_signature(message_view, parsed, hasher, include, body_hashes[parsed.algorithm]))
        return b"".join(signatures), keys[0].domain


def _signature(message_view: dkim.DKIM, parsed: _ParsedKey, hasher, include: list[bytes], body_hash: bytes) -> bytes:
    """One DKIM-Signature field, as `DKIM.sign()` writes it, for a body hash already computed."""
    domain = parsed.key.domain.encode("ascii")
    tags = [
        (b"v", b"1"),
        (b"a", parsed.algorithm),
        (b"c", CANONICALIZATION.to_c_value()),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", parsed.key.selector.encode("ascii")),
        (b"t", str(int(time.time())).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        # dkimpy folds b= onto a line of its own, so that adding the value moves no other tag.
        (b"b", b"0" * 60),
    ]
    message_view.signature_algorithm = parsed.algorithm
    message_view.hasher = hasher
    value = message_view.gen_header(tags, tuple(include), CANONICALIZATION, b"DKIM-Signature", parsed.private)
    return b"DKIM-Signature: " + value
