"""Certificates for the admin: describe one, match it to a host name, make a key with a CSR, or
a self-signed certificate (SPEC §5 `mailgate cert`), with the `cryptography` library.

Owns: reading PEM or DER certificates, the facts an admin asks about (subject, issuer, SANs,
validity, days left), the host-name match of RFC 6125 §6.4 (DNS-ID in subjectAltName, one
left-most "*" label; the CN only when no DNS-ID exists, RFC 6125 §6.4.4; IP addresses against
iPAddress SANs only, RFC 6125 §1.7.2 / RFC 5280 §4.2.1.6), and generating keys, CSRs and
self-signed certificates.
Must not: verify chains or trust (the ssl module does that when asked), write files (the CLI
does, refusing to overwrite), or connect anywhere.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mailgate.tools.options import CERT_KEY_TYPES, SELF_SIGNED_DAYS

RSA_BITS = 2048  # NIST SP 800-57 Part 1 Rev. 5 Table 2: the smallest RSA size still approved


@dataclass
class CertificateInfo:
    subject: str
    issuer: str
    dns_names: list[str] = field(default_factory=list)
    ip_addresses: list[str] = field(default_factory=list)
    not_before: str = ""
    not_after: str = ""
    days_left: int = 0
    expired: bool = False
    self_signed: bool = False
    serial: str = ""
    fingerprint_sha256: str = ""
    name_checked: str = ""  # the host name matched against, "" when none was asked
    name_matches: bool | None = None


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of PEM data (a chain), or the one of DER; ValueError when none."""
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    names = extension.get_values_for_type(x509.DNSName)
    addresses = [str(address) for address in extension.get_values_for_type(x509.IPAddress)]
    return names, addresses


def _common_names(cert: x509.Certificate) -> list[str]:
    return [str(attribute.value) for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _dns_match(pattern: str, host: str) -> bool:
    """RFC 6125 §6.4.3: a "*" only as the whole left-most label, matching exactly one label."""
    pattern, host = pattern.rstrip(".").lower(), host.rstrip(".").lower()
    if not pattern.startswith("*."):
        return pattern == host
    suffix = pattern[1:]  # ".example.com"
    return host.endswith(suffix) and "." not in host[: -len(suffix)] and len(host) > len(suffix)


def name_matches(cert: x509.Certificate, host: str) -> bool:
    """Does the certificate name `host` (a DNS name or an IP address)? See the module docstring."""
    dns_names, ip_addresses = _sans(cert)
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is not None:
        return any(ipaddress.ip_address(value) == address for value in ip_addresses)
    candidates = dns_names or _common_names(cert)
    return any(_dns_match(candidate, host) for candidate in candidates)


def describe(cert: x509.Certificate, host: str = "", *, now: datetime.datetime | None = None) -> CertificateInfo:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    dns_names, ip_addresses = _sans(cert)
    not_after = cert.not_valid_after_utc
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=not_after.isoformat(),
        days_left=(not_after - now).days,
        expired=not_after < now or cert.not_valid_before_utc > now,
        self_signed=cert.subject == cert.issuer,
        serial=f"{cert.serial_number:x}",
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":"),
        name_checked=host,
        name_matches=name_matches(cert, host) if host else None,
    )


def new_private_key(key_type: str = "ec") -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """P-256 (RFC 8422 §5.1.1 named curve) by default; RSA for old peers."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key type {key_type!r} (choose from {', '.join(CERT_KEY_TYPES)})")


def _san_extension(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            entries.append(x509.DNSName(name.lower().rstrip(".")))
    return x509.SubjectAlternativeName(entries)


def make_csr(key, common_name: str, sans: list[str]) -> x509.CertificateSigningRequest:
    """A CSR for a CA; the CN is repeated in the SANs, as CAs and RFC 6125 §6.4.4 expect."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(_san_extension([common_name, *sans]), critical=False)
        .sign(key, hashes.SHA256())
    )


def make_self_signed(
    key, common_name: str, sans: list[str], days: int = SELF_SIGNED_DAYS,
    *, now: datetime.datetime | None = None,
) -> x509.Certificate:
    """A self-signed server certificate (for tests and labs; no client trusts it by default)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # clock skew between hosts
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(_san_extension([common_name, *sans]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )


def key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
