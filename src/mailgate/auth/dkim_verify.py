"""DKIM verification of every signature of a message (RFC 6376 §6; Ed25519, RFC 8463), with dkimpy.

Owns: verifying up to a configured number of DKIM-Signature fields, each on its own, and giving
each the result RFC 8601 §2.7.1 names: pass, fail (the hashes do not match), neutral (no
signature was checked), policy (valid, but not acceptable here), temperror (the key could not be
fetched now) or permerror (the signature or key record is broken, or there is no key).
Local policy, stricter than a bare "the signature verifies":
- a signature whose l= leaves part of the body unsigned is `policy`, never `pass`: anything
  could have been appended below the signed part (RFC 6376 §8.2);
- rsa-sha1 is `permerror` (RFC 8301 §3.1: verifiers MUST NOT consider it valid); RSA keys under
  1024 bits are `permerror` (RFC 8301 §3.2).
Must not: run on the event loop (dkimpy is synchronous: a worker thread), or decide DMARC.
"""

from __future__ import annotations

from dataclasses import dataclass

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError

from mailgate.auth.dns_cache import ThreadLookups
from mailgate.dns.resolver import DnsTemporaryError

# RFC 6376 §8.4 / RFC 8601: a verifier may bound the signatures it checks per message.
DEFAULT_MAX_SIGNATURES = 5
B_PREFIX = 8  # header.b: the first characters of b= tell signatures apart (RFC 6008 §2)


@dataclass(frozen=True)
class DkimResult:
    result: str  # pass | fail | neutral | policy | temperror | permerror
    domain: str = ""  # d=
    selector: str = ""  # s=
    algorithm: str = ""  # a=
    b_prefix: str = ""
    reason: str = ""


class KeyLookup:
    """dkimpy's dnsfunc over ThreadLookups, remembering why a key was not found."""

    def __init__(self, lookups: ThreadLookups) -> None:
        self._lookups = lookups
        self.temporary = ""

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        try:
            records = self._lookups.lookup("txt", name.decode("ascii", "replace").rstrip("."))
        except DnsTemporaryError as exc:
            self.temporary = str(exc)
            raise dkim.DnsTimeoutError(str(exc)) from None
        # RFC 6376 §3.6.2.2: several records at one name is a broken key (dkimpy takes the first).
        keys = [text for text in records if "p=" in text]
        return keys[0].encode("utf-8") if len(keys) == 1 else None


def verify_all(message: bytes, lookups: ThreadLookups, max_signatures: int = DEFAULT_MAX_SIGNATURES) -> list[DkimResult]:
    """One result per DKIM-Signature field, top first; beyond `max_signatures`, `neutral`."""
    verifier = dkim.DKIM(message, minkey=1024)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    results = []
    for index in range(count):
        if index >= max_signatures:
            results.append(DkimResult("neutral", reason=f"not checked: more than {max_signatures} signatures"))
            continue
        results.append(_verify_one(verifier, index, lookups))
    return results


def _verify_one(verifier: dkim.DKIM, index: int, lookups: ThreadLookups) -> DkimResult:
    key = KeyLookup(lookups)
    verifier.signature_fields = {}
    verifier.pk = None  # set by dkimpy only once a key record was found and parsed
    try:
        valid = verifier.verify(index, dnsfunc=key)
    except dkim.ValidationError as exc:
        # dkimpy raises for a body hash that does not match: the signature fails (RFC 6376 §6.3).
        failed = "body hash mismatch" in str(exc)
        return _described("fail" if failed else "permerror", verifier, "body hash did not verify" if failed else str(exc))
    except dkim.DKIMException as exc:
        return _described("permerror", verifier, str(exc))
    except Exception as exc:  # dkimpy raises bare errors on some malformed input
        return _described("permerror", verifier, f"malformed signature ({type(exc).__name__})")
    fields = verifier.signature_fields
    if key.temporary:
        return _described("temperror", verifier, key.temporary)
    if not valid:
        if verifier.pk is None:
            return _described("permerror", verifier, "no usable key record")
        return _described("fail", verifier, "signature did not verify")
    if fields.get(b"a", b"").lower() == b"rsa-sha1":
        return _described("permerror", verifier, "rsa-sha1 is not accepted (RFC 8301 §3.1)")
    if b"l" in fields and not _covers_body(verifier, fields):
        return _described("policy", verifier, "l= leaves part of the body unsigned")
    return _described("pass", verifier, "")


def _covers_body(verifier: dkim.DKIM, fields: dict) -> bool:
    try:
        policy = CanonicalizationPolicy.from_c_value(fields.get(b"c", b"simple/simple"))
        return int(fields[b"l"]) >= len(policy.canonicalize_body(verifier.body))
    except (InvalidCanonicalizationPolicyError, ValueError):
        return False


def _described(result: str, verifier: dkim.DKIM, reason: str) -> DkimResult:
    fields = verifier.signature_fields or {}

    def text(tag: bytes) -> str:
        return fields.get(tag, b"").decode("ascii", "replace").strip()

    b_value = "".join(text(b"b").split())
    return DkimResult(result, text(b"d").lower(), text(b"s"), text(b"a").lower(), b_value[:B_PREFIX], reason)
