"""ARC (RFC 8617): verifying the chain a message arrives with, and sealing it as it leaves us.

Owns: the chain validation status of a message (pass, fail or none, RFC 8617 §5.2) with the
domain of its most recent sealer, through dkimpy's ARC verifier and the resolver seam; and our
ARC set (ARC-Authentication-Results with our results, ARC-Message-Signature, ARC-Seal; §5.1),
made with an RSA key when sealing is on, for a relay that changes messages it passes on (a
screener that strips or tags breaks the sender's DKIM; the seal says what we saw before).
Must not: decide whether a chain is trusted (inbound.py, with `arc_trusted_sealers`) or run on
the event loop (dkimpy is synchronous: a worker thread).
"""

from __future__ import annotations

from dataclasses import dataclass

import dkim

from mailgate.auth.dkim_keys import RSA, DkimKey
from mailgate.auth.dkim_verify import KeyLookup
from mailgate.auth.dns_cache import ThreadLookups

# RFC 8617 §4.2.1: at most 50 ARC sets; dkimpy refuses to add a 51st.
SEALED_HEADERS = (b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"mime-version",
                  b"content-type")


@dataclass(frozen=True)
class ArcResult:
    result: str  # pass | fail | none | temperror
    instance: int = 0  # the most recent i=
    sealer: str = ""  # d= of the most recent ARC-Seal
    reason: str = ""


def verify_chain(message: bytes, lookups: ThreadLookups) -> ArcResult:
    key = KeyLookup(lookups)
    try:
        status, instances, comment = dkim.ARC(message).verify(dnsfunc=key)
    except dkim.DKIMException as exc:
        return ArcResult("fail", reason=str(exc))
    if key.temporary:
        return ArcResult("temperror", reason=key.temporary)
    latest = instances[0] if instances else {}
    sealer = latest.get("as-domain", b"") or b""
    result = {dkim.CV_Pass: "pass", dkim.CV_Fail: "fail", dkim.CV_None: "none"}.get(status, "fail")
    return ArcResult(result, int(latest.get("instance", 0) or 0), sealer.decode("ascii", "replace").lower(),
                     "" if result == "pass" else str(comment))


def seal(message: bytes, key: DkimKey, authserv_id: str) -> bytes:
    """Our ARC set for `message`, which carries our Authentication-Results (with an arc= result);
    b"" when dkimpy ends the chain (RFC 8617 §5.1.2)."""
    if key.key_type != RSA:
        raise ValueError("ARC sealing takes an RSA key (RFC 8617 §4.1.3: as DKIM; rsa-sha256 is what verifiers know)")
    headers = dkim.ARC(message, linesep=b"\r\n").sign(
        key.selector.encode("ascii"), key.domain.encode("ascii"), key.signing_key, authserv_id.encode("ascii"),
        include_headers=[h for h in SEALED_HEADERS if _present(message, h)] or [b"from"],
    )
    return b"".join(headers)


def _present(message: bytes, name: bytes) -> bool:
    head = message.split(b"\r\n\r\n", 1)[0].lower()
    return head.startswith(name + b":") or (b"\r\n" + name + b":") in head
