"""The DKIM key types and the RSA size a new key gets (RFC 8463 §4, RFC 8301 §3.2).

Owns: those names and numbers alone, so that `mailgate dkim keygen` can offer them in its parser
without importing cryptography at every start of the command line. Must not: import anything
(auth/dkim_keys.py makes, loads and publishes the keys).
"""

from __future__ import annotations

RSA = "rsa"
ED25519 = "ed25519"
KEY_TYPES = (RSA, ED25519)
# RFC 8301 §3.2: signers MUST use RSA keys of at least 1024 bits and SHOULD use 2048.
MIN_RSA_BITS = 1024
DEFAULT_RSA_BITS = 2048
