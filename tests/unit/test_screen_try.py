"""Screen rules as an administrator writes and tries them: keys of different kinds combine with
AND, `match = "any"` with OR, `mailgate screen test RULES MESSAGE.eml`, and the example rules."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from mailgate.cli.main import main
from mailgate.config.loader import ConfigError, load_file
from mailgate.screen import ScreenConfigError, ScreenContext
from tests.support.screening import screener_from

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "data" / "mime"
INBOUND = ScreenContext("inbound", "anna@corp.example", ["ben@hosted.test"], "192.0.2.7", "mx.corp.example")
LURE = {"name": "lure", "direction": "inbound", "action": "quarantine",
        "subject": ["overdue invoice"], "body": ["enable macros"]}
MESSAGES = {
    "both": b"Subject: Overdue invoice\r\n\r\nPlease enable macros.\r\n",
    "subject": b"Subject: Overdue invoice\r\n\r\nSee attached.\r\n",
    "body": b"Subject: Hello\r\n\r\nPlease enable macros.\r\n",
    "neither": b"Subject: Hello\r\n\r\nSee attached.\r\n",
}


def verdict_for(rule: dict, message: bytes, ctx: ScreenContext = INBOUND) -> str:
    opened = []

    def open_message() -> io.BytesIO:
        opened.append(1)
        return io.BytesIO(message)

    screener = screener_from([rule], {}, {})
    return asyncio.run(screener.screen(ctx, open_message, len(message))).action + ("" if opened else " unopened")


@pytest.mark.parametrize(("message", "all_keys", "any_key"), [
    ("both", "quarantine", "quarantine"),
    ("subject", "accept", "quarantine"),
    ("body", "accept", "quarantine"),
    ("neither", "accept", "accept"),
])
def test_keys_of_different_kinds_combine_with_and_or_with_match_any(message: str, all_keys: str, any_key: str) -> None:
    assert verdict_for(LURE, MESSAGES[message]) == all_keys
    assert verdict_for(dict(LURE, match="any"), MESSAGES[message]) == any_key


def test_match_any_with_an_envelope_key_decides_without_reading_the_message() -> None:
    rule = dict(LURE, match="any", sender_domain=["corp.example"])
    assert verdict_for(rule, MESSAGES["neither"]) == "quarantine unopened"
    elsewhere = ScreenContext("inbound", "x@other.example", ["ben@hosted.test"], "192.0.2.7", "h")
    assert verdict_for(rule, MESSAGES["subject"], elsewhere) == "quarantine"
    assert verdict_for(rule, MESSAGES["neither"], elsewhere) == "accept"
    all_keys = dict(LURE, sender_domain=["corp.example"])
    assert verdict_for(all_keys, MESSAGES["both"], elsewhere) == "accept unopened"


def test_match_values_and_strip_with_any_are_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        screener_from([dict(LURE, match="some")])
    assert "screen_rule[0].match: must be one of all, any" in raised.value.errors
    strip = {"name": "s", "direction": "both", "action": "strip", "extension": ["exe"], "match": "any"}
    with pytest.raises(ScreenConfigError):
        screener_from([strip])


RULES = """
[[screen_rule]]
name = "block-exe"
direction = "inbound"
action = "reject"
extension = ["exe"]
text = "Executables are not accepted"
"""


def test_screen_test_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    assert main(["screen", "test", str(rules), str(SAMPLES / "outlook_mixed.eml")]) == 1
    out = capsys.readouterr().out
    assert "verdict: reject" in out and "rule:    block-exe" in out
    assert "reply:   550 5.7.1 Executables are not accepted" in out
    assert main(["screen", "test", str(rules), str(SAMPLES / "plain_clean.eml")]) == 0
    assert capsys.readouterr().out == "verdict: accept\n"
    assert main(["screen", "test", str(rules), str(SAMPLES / "outlook_mixed.eml"), "--direction", "outbound"]) == 0


def test_screen_test_takes_a_whole_configuration_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["screen", "test", str(ROOT / "docs" / "example.toml"), str(SAMPLES / "outlook_mixed.eml")]) == 1
    assert "rule:    no-executables" in capsys.readouterr().out


def test_screen_test_errors_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES.replace('extension = ["exe"]', 'extensoin = ["exe"]'))
    assert main(["screen", "test", str(rules), str(SAMPLES / "plain_clean.eml")]) == 2
    err = capsys.readouterr().err
    assert "screen_rule[0].extensoin: unknown key" in err and "Traceback" not in err
    assert main(["screen", "test", str(tmp_path / "missing.toml"), str(SAMPLES / "plain_clean.eml")]) == 2
    assert "missing.toml: No such file or directory" in capsys.readouterr().err


def test_the_example_configuration_has_screen_rules() -> None:
    config = load_file(ROOT / "docs" / "example.toml")
    assert [rule.name for rule in config.screen_rule] == ["no-executables", "invoice-lures"]
