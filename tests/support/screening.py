"""Screeners for tests, built from plain tables through the configuration loader, as `serve` does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mailgate.config.loader import load_section
from mailgate.screen import Screener
from mailgate.screen.screener import screener_options
from mailgate.screen.rules import Rule, parse_rules


def validated_rules(tables: Sequence[Mapping[str, Any]]) -> list[Any]:
    return load_section("screen_rule", [dict(table) for table in tables])


def rules_from(tables: Sequence[Mapping[str, Any]]) -> list[Rule]:
    return parse_rules(validated_rules(tables))


def screener_from(
    rules: Sequence[Mapping[str, Any]] = (), antivirus: Mapping[str, Any] | None = None,
    spam: Mapping[str, Any] | None = None, screen: Mapping[str, Any] | None = None,
) -> Screener:
    return Screener.from_config(
        validated_rules(rules), load_section("antivirus", dict(antivirus or {})),
        load_section("spam", dict(spam or {})), load_section("screen", dict(screen or {})))


def screener_with(rules: Sequence[Rule] = (), clamd: Any = None, rspamd: Any = None, **options: Any) -> Screener:
    """A screener around given rules and scanners (fakes, or a client with a time-out under the
    schema's minimum), with the schema's defaults for every option not given."""
    defaults = screener_options(load_section("antivirus", {}), load_section("spam", {}), load_section("screen", {}))
    return Screener(list(rules), clamd, rspamd, **{**defaults, **options})


def scanner_defaults(section: str) -> Any:
    """The `[antivirus]` or `[spam]` section with nothing set: the schema's time-outs and sizes."""
    return load_section(section, {})
