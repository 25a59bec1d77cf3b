"""Loading configuration: TOML in, a validated `Config` out, or every error with its key path.

Owns: reading the file (tomllib), checking it against `schema.SECTIONS` (unknown keys are
errors), applying defaults, the cross-key checks no single key can make (TLS needs a
certificate, listener names unique, domains well formed), and the embedded default.
Must not: build runtime objects (that is app.py) or decide relay policy.
"""

from __future__ import annotations

import difflib
import ipaddress
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mailgate.config.schema import REQUIRED, SECTIONS, Section
from mailgate.config.types import parse_host_port
from mailgate.core.address import AddressError, normalise_domain

EMBEDDED_DEFAULT = "embedded.toml"
EMBEDDED_SOURCE = "<embedded default>"  # Config.source of the embedded default


class ConfigError(Exception):
    """The configuration is invalid; `errors` lists every problem as `key.path: reason`."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        self.errors = errors
        self.source = source
        super().__init__("\n".join(errors))


@dataclass
class Config:
    """Validated configuration: one namespace per section, a list of them per array section."""

    source: str
    raw: dict[str, Any]
    server: SimpleNamespace
    listener: list[SimpleNamespace]
    relay: SimpleNamespace
    domain: list[SimpleNamespace]
    recipient_source: list[SimpleNamespace]
    delivery: SimpleNamespace
    dns: SimpleNamespace
    screen: SimpleNamespace
    screen_rule: list[SimpleNamespace]
    antivirus: SimpleNamespace
    spam: SimpleNamespace
    limits: SimpleNamespace
    dkim: SimpleNamespace
    dkim_key: list[SimpleNamespace]
    authentication: SimpleNamespace
    log: SimpleNamespace
    metrics: SimpleNamespace
    console: SimpleNamespace
    queue: SimpleNamespace


def load_file(path: str | Path) -> Config:
    text = Path(path).read_bytes()
    return load_text(text.decode("utf-8", "replace"), source=str(path))


def load_embedded() -> Config:
    text = resources.files("mailgate.config").joinpath(EMBEDDED_DEFAULT).read_text("utf-8")
    return load_text(text, source=EMBEDDED_SOURCE)


def load_text(text: str, source: str = "<string>") -> Config:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"], source) from None
    errors: list[str] = []
    known = {s.name for s in SECTIONS}
    for name in document:
        if name not in known:
            errors.append(f"{name}: unknown section{_did_you_mean(name, known)} (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for section in SECTIONS:
        raw = document.get(section.name)
        if section.array:
            values[section.name] = _load_array(section, raw, errors)
        else:
            values[section.name] = _load_table(section, section.name, raw, errors)
    _cross_checks(values, errors)
    if errors:
        raise ConfigError(errors, source)
    return Config(source=source, raw=document, **values)


def load_section(name: str, raw: Any) -> Any:
    """One section's tables validated against the schema alone (no cross-key checks): a list of
    namespaces for an array section. Raises ConfigError. For tools and tests that build one
    component from a fragment of configuration."""
    section = next(s for s in SECTIONS if s.name == name)
    errors: list[str] = []
    if section.array:
        loaded: Any = _load_array(section, raw, errors)
    else:
        loaded = _load_table(section, section.name, raw, errors)
    if errors:
        raise ConfigError(errors)
    return loaded


def _load_array(section: Section, raw: Any, errors: list[str]) -> list[SimpleNamespace]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.append(f"{section.name}: must be an array of tables ([[{section.name}]])")
        return []
    return [_load_table(section, f"{section.name}[{i}]", item, errors) for i, item in enumerate(raw)]


def _load_table(section: Section, path: str, raw: Any, errors: list[str]) -> SimpleNamespace:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{path}: must be a table")
        raw = {}
    for name in raw:
        if section.key(name) is None:
            errors.append(f"{path}.{name}: unknown key{_did_you_mean(name, [k.name for k in section.keys])}")
    out = {}
    for key in section.keys:
        if key.name in raw:
            try:
                out[key.name] = key.kind.convert(raw[key.name])
            except ValueError as exc:
                errors.append(f"{path}.{key.name}: {exc}")
                out[key.name] = None
        elif key.default is REQUIRED:
            errors.append(f"{path}.{key.name}: required")
            out[key.name] = None
        else:
            default = list(key.default) if isinstance(key.default, tuple) else key.default
            out[key.name] = key.kind.convert(default)
    return SimpleNamespace(**out)


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    """`; did you mean "x"?` for the closest known name (Postfix's postconf does not; Exim does)."""
    close = difflib.get_close_matches(name.lower(), list(known), n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


def _cross_checks(values: dict[str, Any], errors: list[str]) -> None:
    names: set[str] = set()
    addresses: set[tuple[str, int]] = set()
    for index, listener in enumerate(values["listener"]):
        path = f"listener[{index}]"
        if None in vars(listener).values():
            continue  # its own errors are reported already
        if listener.name in names:
            errors.append(f"{path}.name: duplicate listener name {listener.name!r}")
        names.add(listener.name)
        if listener.address in addresses:
            errors.append(f"{path}.address: another listener binds {listener.address}")
        addresses.add(listener.address)
        if effective_tls(listener) != "none" and not (listener.cert_file and listener.key_file):
            errors.append(f"{path}.cert_file: TLS mode {effective_tls(listener)!r} needs cert_file and key_file")
        if listener.proxy_protocol and not listener.proxy_from:
            errors.append(f"{path}.proxy_from: PROXY protocol needs the load balancers' networks")
        if effective_auth(listener) != "none" and effective_tls(listener) == "none":
            errors.append(f"{path}.auth: AUTH is only offered inside TLS (SPEC R4); set tls")
    if not values["listener"]:
        errors.append("listener: at least one [[listener]] is required")
    seen_domains: set[str] = set()
    for index, domain in enumerate(values["domain"]):
        path = f"domain[{index}]"
        if domain.name is None or domain.next_hop is None:
            continue
        try:
            normalised = normalise_domain(domain.name.strip().lstrip("."))
        except AddressError as exc:
            errors.append(f"{path}.name: {exc}")
            continue
        if normalised in seen_domains:
            errors.append(f"{path}.name: duplicate domain {domain.name!r}")
        seen_domains.add(normalised)
        for hop_index, hop in enumerate(domain.next_hop):
            if hop.startswith("maildir:"):
                if not hop[len("maildir:"):]:
                    errors.append(f"{path}.next_hop[{hop_index}]: maildir: needs a path")
                continue
            try:
                parse_host_port(hop, 25)
            except ValueError as exc:
                errors.append(f"{path}.next_hop[{hop_index}]: {exc}")
    server = values["server"]
    if None not in (server.disk_soft_free, server.disk_hard_free) and server.disk_hard_free > server.disk_soft_free:
        errors.append("server.disk_hard_free: must not exceed server.disk_soft_free")
    if values["metrics"].address:
        try:
            parse_host_port(values["metrics"].address)
        except ValueError as exc:
            errors.append(f"metrics.address: {exc}")
    _console_checks(values["console"], errors)
    if values["delivery"].smart_host:
        try:
            parse_host_port(values["delivery"].smart_host, 25)
        except ValueError as exc:
            errors.append(f"delivery.smart_host: {exc}")
    _recipient_source_checks(values, errors)


def _console_checks(console: SimpleNamespace, errors: list[str]) -> None:
    """Plain HTTP only on loopback: elsewhere a password and the session cookie would cross the
    network in clear text (the issue: "refused over plain HTTP except on loopback")."""
    if console.address is None:
        return
    try:
        host, _port = parse_host_port(console.address)
    except ValueError as exc:
        errors.append(f"console.address: {exc}")
        return
    if bool(console.cert_file) != bool(console.key_file):
        errors.append("console.cert_file: HTTPS needs both cert_file and key_file")
    elif console.enabled and not console.cert_file and not is_loopback_host(host):
        errors.append(f"console.address: {console.address} is not a loopback address; "
                      "plain HTTP is refused there: set console.cert_file and console.key_file (HTTPS)")


def is_loopback_host(host: str) -> bool:
    """True for a loopback IP literal (127.0.0.0/8, ::1) or `localhost`; a wildcard is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _recipient_source_checks(values: dict[str, Any], errors: list[str]) -> None:
    """Sources are complete for their type, and every domain names sources that exist."""
    kinds: dict[str, str] = {}
    for index, source in enumerate(values["recipient_source"]):
        path = f"recipient_source[{index}]"
        if source.name is None or source.type is None:
            continue
        if source.name == "static" or source.name in kinds:
            errors.append(f"{path}.name: {source.name!r} is reserved or already used")
        kinds[source.name] = source.type
        if source.type == "file" and not source.path:
            errors.append(f"{path}.path: a file source needs the map file's path")
        if source.type == "ldap":
            if not source.servers:
                errors.append(f"{path}.servers: an ldap source needs at least one ldap:// or ldaps:// URI")
            for uri_index, uri in enumerate(source.servers):
                if not uri.lower().startswith(("ldap://", "ldaps://")):
                    errors.append(f"{path}.servers[{uri_index}]: {uri!r} is not an ldap:// or ldaps:// URI")
            if not source.search_base:
                errors.append(f"{path}.search_base: an ldap source needs the base DN to search")
    for index, domain in enumerate(values["domain"]):
        path = f"domain[{index}]"
        if domain.name is None or domain.next_hop is None or not domain.recipient_sources:
            continue
        for name in domain.recipient_sources:
            if name != "static" and name not in kinds:
                errors.append(f"{path}.recipient_sources: no [[recipient_source]] named {name!r}")
            if kinds.get(name) == "callahead" and not any(not hop.startswith("maildir:") for hop in domain.next_hop):
                errors.append(f"{path}.recipient_sources: call-ahead source {name!r} needs a host:port next_hop to ask")
        if "static" in domain.recipient_sources and not domain.local_parts:
            errors.append(f"{path}.recipient_sources: `static` needs local_parts")
        if domain.local_parts and "static" not in domain.recipient_sources:
            errors.append(f"{path}.local_parts: not consulted; add \"static\" to recipient_sources")
        if len(set(domain.recipient_sources)) != len(domain.recipient_sources):
            errors.append(f"{path}.recipient_sources: a source is named twice")


def effective_tls(listener: SimpleNamespace) -> str:
    if listener.tls != "profile":
        return listener.tls
    return "implicit" if listener.profile == "smtps" else "starttls"


def effective_auth(listener: SimpleNamespace) -> str:
    if listener.auth != "profile":
        return listener.auth
    return "none" if listener.profile == "mx" else "required"
