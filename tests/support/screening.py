"""Screeners for tests, built from plain tables through the configuration loader, as `serve` does."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mailgate.config.loader import load_section
from mailgate.screen import Screener
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
