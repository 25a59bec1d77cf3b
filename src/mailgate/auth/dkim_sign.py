"""DKIM signing of outbound mail (RFC 6376 §5; Ed25519, RFC 8463), with dkimpy.

Owns: choosing the active keys for the From: domain (the domain itself, or the nearest parent
domain with a key that covers subdomains, which DMARC's relaxed alignment accepts), the header
list of each signature (the configured set as present in the message, the oversigned names once
more than they occur so that an added copy breaks the signature, RFC 6376 §8.15), and the
signatures themselves, relaxed/relaxed (RFC 6376 §3.4), one per active key: rsa-sha256 and
ed25519-sha256 side by side (RFC 8463 §1). Must not: decide whether a message is signed at all
(only internal mail is, the caller knows the origin), read files or touch the event loop (it is
CPU work, the caller runs it in a thread).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import dkim

from mailgate.auth import rsa_openssl
from mailgate.auth.dkim_keys import DkimKey
from mailgate.auth.headers import fields, from_domains, head_of

rsa_openssl.install()

CANONICALIZATION = (b"relaxed", b"relaxed")

@dataclass(frozen=True)
class SigningKey:
    key: DkimKey
    subdomains: bool = True


class DkimSigner:
    def __init__(
        self, keys: Iterable[SigningKey], signed_headers: Iterable[str], oversigned_headers: Iterable[str]
    ) -> None:
        self._by_domain: dict[str, list[SigningKey]] = {}
        for entry in keys:
            self._by_domain.setdefault(entry.key.domain, []).append(entry)
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
        signer = dkim.DKIM(message, linesep=b"\r\n")
        signatures = [
            signer.sign(
                key.selector.encode("ascii"), key.domain.encode("ascii"), key.signing_key,
                signature_algorithm=key.algorithm.encode("ascii"), canonicalize=CANONICALIZATION,
                include_headers=include,
            )
            for key in keys
        ]
        return b"".join(signatures), keys[0].domain
