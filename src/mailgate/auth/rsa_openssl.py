"""dkimpy's RSA signing primitive, done by OpenSSL through `cryptography`.

Owns: one function with the signature of `dkim.crypto.RSASSA_PKCS1_v1_5_sign` (RFC 8017 §8.2.1,
the same bytes for the same key and digest; tests/unit/test_auth_dkim.py compares them) and
putting it in dkimpy's place. dkimpy computes RSA with Python integers: 7-8 ms per 2048-bit
signature, holding the GIL; OpenSSL takes about 1 ms and lets the other threads run, which is
what keeps signed throughput near unsigned (docs/performance.md). Everything else (header
selection, canonicalisation, hashing, the tag list) stays dkimpy's. Must not: be used to verify.
"""

from __future__ import annotations

import threading

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

_DIGESTS = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}
_keys: dict[int, rsa.RSAPrivateKey] = {}
_lock = threading.Lock()


def _private_key(numbers: dict) -> rsa.RSAPrivateKey:
    modulus = numbers["modulus"]
    key = _keys.get(modulus)
    if key is None:
        key = rsa.RSAPrivateNumbers(
            p=numbers["prime1"], q=numbers["prime2"], d=numbers["privateExponent"],
            dmp1=numbers["exponent1"], dmq1=numbers["exponent2"], iqmp=numbers["coefficient"],
            public_numbers=rsa.RSAPublicNumbers(numbers["publicExponent"], modulus),
        ).private_key()
        with _lock:
            _keys[modulus] = key
    return key


def rsassa_pkcs1_v1_5_sign(hash_object, private_key: dict) -> bytes:
    """RSASSA-PKCS1-v1_5 signature of `hash_object`'s digest (dkimpy's key dictionary)."""
    algorithm = _DIGESTS[hash_object.name]()
    return _private_key(private_key).sign(hash_object.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))


def install() -> None:
    """dkimpy's DKIM and ARC signers call `dkim.RSASSA_PKCS1_v1_5_sign` by its module name."""
    dkim.RSASSA_PKCS1_v1_5_sign = rsassa_pkcs1_v1_5_sign
