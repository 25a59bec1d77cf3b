"""TLS for the listeners: server contexts from certificate files, with clear start-up errors.

Owns: building an `ssl.SSLContext` per listener (TLS 1.2 and newer, SPEC §5; under TLS 1.2 only
forward-secret AEAD suites, `INBOUND_TLS12_SUITES`), checking that the
files exist and that the key matches the certificate (a readable error, not a traceback), and
reloading them on SIGHUP (a new context for new connections; sessions in progress keep theirs).
Must not: accept connections or speak SMTP.
"""

from __future__ import annotations

import os
import ssl


# TLS 1.2 suites a listener accepts: ECDHE key exchange (forward secrecy) with an AEAD cipher only,
# as RFC 9325 §4.2 recommends; no CBC (Lucky13-style padding oracles, RFC 9325 §4.1), no static RSA
# and no finite-field DHE. Every client of the last decade offers one of these (they are the
# "intermediate" profile of Mozilla's guidelines); TLS 1.3 suites are all AEAD and not set here.
INBOUND_TLS12_SUITES = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1:!AESCCM"


class TlsConfigError(Exception):
    """A certificate or key problem, phrased for the admin, naming the configuration key."""


def server_context(cert_file: str, key_file: str, key_path: str) -> ssl.SSLContext:
    """A server context; `key_path` (e.g. `listener[0]`) prefixes every error."""
    for name, path in (("cert_file", cert_file), ("key_file", key_file)):
        if not path:
            raise TlsConfigError(f"{key_path}.{name}: required for TLS")
        try:
            is_file = os.path.isfile(os.path.realpath(path, strict=True))
        except PermissionError:
            raise TlsConfigError(f"{key_path}.{name}: {path}: a folder on the way is not searchable "
                                 f"by uid {os.geteuid()} (chgrp the folders to the service group, chmod g+x)") from None
        except OSError:
            is_file = False
        if not is_file:
            raise TlsConfigError(f"{key_path}.{name}: {path}: no such file")
        if not os.access(path, os.R_OK):
            raise TlsConfigError(f"{key_path}.{name}: {path}: not readable")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # SPEC §5: TLS 1.2 and newer
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_ciphers(INBOUND_TLS12_SUITES)
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc)
        if "KEY_VALUES_MISMATCH" in reason or "key values mismatch" in reason.lower():
            raise TlsConfigError(f"{key_path}.key_file: {key_file} does not match {cert_file}") from None
        raise TlsConfigError(f"{key_path}.cert_file: cannot load {cert_file} / {key_file}: {reason}") from None
    return context


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """`TLSv1.3 TLS_AES_256_GCM_SHA384` for logs and the Received header; "" without TLS."""
    if ssl_object is None:
        return ""
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0]}" if cipher else str(ssl_object.version())
