"""Value types of configuration keys: how a TOML value is checked and converted.

Owns: one small class per kind of value (string, integer with bounds, boolean, duration, size,
choice, host:port, CIDR network, lists of these), each with `convert(raw) -> value` raising
`ValueError` with a short reason, and `describe()` for the generated reference.
Must not: know the schema's keys or read files.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG])?i?[bB]?\s*$")
_SIZE_UNITS = {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class ValueKind:
    name = "value"

    def convert(self, raw: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def render(self, value: Any) -> str:
        """The default as it is written in TOML, for the reference."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return f'"{value}"'
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(self._render_item(v) for v in value) + "]"
        return str(value)

    def _render_item(self, value: Any) -> str:
        return f'"{value}"' if isinstance(value, str) else str(value)


@dataclass
class Text(ValueKind):
    allow_empty: bool = True
    name = "string"

    def convert(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise ValueError("must be a string")
        if not raw and not self.allow_empty:
            raise ValueError("must not be empty")
        return raw


@dataclass
class Integer(ValueKind):
    minimum: int | None = None
    maximum: int | None = None
    name = "integer"

    def convert(self, raw: Any) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError("must be an integer")
        _check_bounds(raw, self.minimum, self.maximum)
        return raw

    def describe(self) -> str:
        return "integer" + _bounds_text(self.minimum, self.maximum)


@dataclass
class Boolean(ValueKind):
    name = "boolean"

    def convert(self, raw: Any) -> bool:
        if not isinstance(raw, bool):
            raise ValueError("must be true or false")
        return raw


@dataclass
class Duration(ValueKind):
    """Seconds as a number, or a string such as "90s", "5m", "4h", "5d"."""

    minimum: float | None = None
    maximum: float | None = None
    name = "duration"

    def convert(self, raw: Any) -> float:
        if isinstance(raw, bool):
            raise ValueError("must be a duration such as 30, \"5m\" or \"4h\"")
        if isinstance(raw, (int, float)):
            seconds = float(raw)
        elif isinstance(raw, str) and (match := _DURATION.match(raw)):
            seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        else:
            raise ValueError("must be a duration such as 30, \"5m\" or \"4h\"")
        _check_bounds(seconds, self.minimum, self.maximum)
        return seconds

    def describe(self) -> str:
        return "duration (seconds, or \"90s\", \"5m\", \"4h\", \"5d\")" + _bounds_text(
            self.minimum, self.maximum
        )


@dataclass
class Size(ValueKind):
    """Bytes as an integer, or a string such as "10M", "512K"."""

    minimum: int | None = None
    maximum: int | None = None
    name = "size"

    def convert(self, raw: Any) -> int:
        if isinstance(raw, bool):
            raise ValueError("must be a size such as 1048576 or \"10M\"")
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, str) and (match := _SIZE.match(raw)):
            unit = match.group(2).lower() if match.group(2) else None
            value = int(match.group(1)) * _SIZE_UNITS[unit]
        else:
            raise ValueError("must be a size such as 1048576 or \"10M\"")
        _check_bounds(value, self.minimum, self.maximum)
        return value

    def describe(self) -> str:
        return "size (bytes, or \"512K\", \"10M\", \"1G\")" + _bounds_text(self.minimum, self.maximum)


@dataclass
class Choice(ValueKind):
    choices: tuple[str, ...] = ()
    name = "choice"

    def convert(self, raw: Any) -> str:
        if raw not in self.choices:
            raise ValueError("must be one of " + ", ".join(self.choices))
        return raw

    def describe(self) -> str:
        return "one of " + ", ".join(f"`{c}`" for c in self.choices)


@dataclass
class HostPort(ValueKind):
    """`host:port` or `[v6]:port`; returns (host, port)."""

    default_port: int | None = None
    name = "host:port"

    def convert(self, raw: Any) -> tuple[str, int]:
        if not isinstance(raw, str) or not raw:
            raise ValueError("not host:port")
        return parse_host_port(raw, self.default_port)

    def render(self, value: Any) -> str:
        return f'"{format_host_port(value)}"'

    def describe(self) -> str:
        if self.default_port:
            return f"host[:port] (port {self.default_port} if omitted)"
        return "host:port (IPv6 as [addr]:port)"


@dataclass
class Network(ValueKind):
    name = "CIDR network"

    def convert(self, raw: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        if not isinstance(raw, str):
            raise ValueError("must be a CIDR network string")
        try:
            return ipaddress.ip_network(raw, strict=False)
        except ValueError:
            raise ValueError(f"{raw!r} is not a CIDR network") from None


@dataclass
class IpAddress(ValueKind):
    """One IPv4 (`version` 4) or IPv6 (6) address as text, "" for none."""

    version: int = 4

    def convert(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise ValueError(f"must be an IPv{self.version} address string")
        if not raw:
            return ""
        try:
            address = ipaddress.ip_address(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not an IP address") from None
        if address.version != self.version:
            raise ValueError(f"{raw!r} is not an IPv{self.version} address")
        return str(address)

    def describe(self) -> str:
        return f"IPv{self.version} address"


@dataclass
class ListOf(ValueKind):
    item: ValueKind = None  # type: ignore[assignment]

    def convert(self, raw: Any) -> tuple:
        if not isinstance(raw, list):
            raise ValueError(f"must be a list of {self.item.describe()}")
        out = []
        for index, element in enumerate(raw):
            try:
                out.append(self.item.convert(element))
            except ValueError as exc:
                raise ValueError(f"item {index}: {exc}") from None
        return tuple(out)

    def describe(self) -> str:
        return f"list of {self.item.describe()}"

    def render(self, value: Any) -> str:
        return "[" + ", ".join(self.item.render(v) for v in value) + "]"


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError("not host:port (missing ']')")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError("not host:port")
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            host, port_text = text, ""
        elif ":" in host:
            raise ValueError("not host:port (write IPv6 addresses as [addr]:port)")
    if not host:
        raise ValueError("not host:port (empty host)")
    if not port_text:
        if default_port is None:
            raise ValueError("not host:port (port missing)")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("not host:port (port must be 1-65535)")
    return host, int(port_text)


def format_host_port(value: tuple[str, int]) -> str:
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_bounds(value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise ValueError(f"must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise ValueError(f"must be at most {maximum}")


def _bounds_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f", {minimum} to {maximum}"
    if minimum is not None:
        return f", at least {minimum}"
    if maximum is not None:
        return f", at most {maximum}"
    return ""
