"""Rule parsing (every error with its key path) and the envelope, header and part predicates."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from mailgate.screen.mime import LeafPart, Needs, walk
from mailgate.screen.rules import (
    ScreenConfigError, ScreenContext, envelope_matches, headers_match, normal_name, part_matches,
)
from mailgate.config.loader import ConfigError
from tests.support.screening import rules_from, validated_rules

DATA = Path(__file__).parent.parent / "data" / "mime"


def _rule(**match: object):
    return rules_from([{"name": "r", "direction": "both", "action": "reject", **match}])[0]


def _parts(sample: str) -> list[LeafPart]:
    parts: list[LeafPart] = []
    walk(io.BytesIO((DATA / sample).read_bytes()), Needs(True, True, True, True), parts.append)
    return parts


def test_type_errors_are_the_schemas_each_with_its_key_path() -> None:
    """The schema alone declares and checks a rule's keys, types and choices (config/schema.py)."""
    with pytest.raises(ConfigError) as raised:
        validated_rules([
            {"name": "a", "direction": "sideways", "action": "explode", "subject": ["x"]},
            {"name": "d", "direction": "inbound", "action": "reject", "client": ["300.1.1.1/8"],
             "min_size": -1, "colour": "red", "match": "some"},
        ])
    errors = "\n".join(raised.value.errors)
    for expected in ("screen_rule[0].direction", "screen_rule[0].action", "screen_rule[1].client",
                     "screen_rule[1].min_size", "screen_rule[1].colour: unknown key",
                     "screen_rule[1].match: must be one of all, any"):
        assert expected in errors


def test_every_other_error_is_reported_with_its_key_path() -> None:
    with pytest.raises(ScreenConfigError) as raised:
        rules_from([
            {"name": "a", "direction": "both", "action": "reject", "subject": ["("]},
            {"name": "b", "direction": "inbound", "action": "strip", "subject": ["x"]},
            {"name": "c", "direction": "inbound", "action": "tag"},
            {"name": "d", "direction": "inbound", "action": "reject",
             "sniffed_type": ["spreadsheet"], "header": ["no colon"], "tag_header": "Bad Header"},
            {"name": "a", "direction": "inbound", "action": "reject", "sender": ["not an address"]},
            {"name": "e", "direction": "inbound", "action": "strip", "extension": ["exe"], "match": "any"},
        ])
    errors = "\n".join(raised.value.errors)
    for expected in ("screen_rule[0].subject", "screen_rule[1].action: strip needs a part key",
                     "screen_rule[2].name: the rule has no match key",
                     "screen_rule[3].sniffed_type", "screen_rule[3].header", "screen_rule[3].tag_header",
                     "screen_rule[4].sender", "screen_rule[5].match: strip needs match"):
        assert expected in errors


def test_duplicate_names_are_refused() -> None:
    table = {"name": "same", "direction": "inbound", "action": "reject", "extension": ["exe"]}
    with pytest.raises(ScreenConfigError, match="duplicate rule name"):
        rules_from([table, table])


def test_envelope_keys() -> None:
    ctx = ScreenContext("inbound", "Bob@Example.COM", ["a@hosted.test", "B@Hosted.Test"],
                        "::ffff:192.0.2.10", "mail.example.com")
    assert envelope_matches(_rule(sender=["bob@example.com"]).match, ctx)
    assert envelope_matches(_rule(sender_domain=["EXAMPLE.com"]).match, ctx)
    assert not envelope_matches(_rule(sender_domain=[".example.com"]).match, ctx)
    assert envelope_matches(_rule(recipient=["b@hosted.test"]).match, ctx)
    assert envelope_matches(_rule(client=["192.0.2.0/24"]).match, ctx)
    assert not envelope_matches(_rule(client=["2001:db8::/32"]).match, ctx)
    assert envelope_matches(_rule(helo=[r"^mail\."]).match, ctx)
    # All given keys must hold.
    assert not envelope_matches(_rule(sender=["bob@example.com"], helo=["^mx"]).match, ctx)
    sub = ScreenContext("inbound", "x@eu.example.com", [], "192.0.2.1", "h")
    assert envelope_matches(_rule(sender_domain=[".example.com"]).match, sub)
    null = ScreenContext("inbound", "", [], "192.0.2.1", "h")
    assert envelope_matches(_rule(sender=["<>"]).match, null)
    assert not envelope_matches(_rule(sender=["<>"]).match, ctx)


def test_subject_and_header_keys_see_decoded_values() -> None:
    parts: list[LeafPart] = []
    headers = walk(io.BytesIO((DATA / "keywords.eml").read_bytes()), Needs(), parts.append).root_headers
    assert headers_match(_rule(subject=["glückwunsch"]).match, headers)  # RFC 2047, any case
    assert headers_match(_rule(header=["X-Campaign: ^spring-"]).match, headers)
    assert not headers_match(_rule(header=["X-Campaign: autumn"]).match, headers)
    assert not headers_match(_rule(subject=["unsubscribe"]).match, headers)


@pytest.mark.parametrize(("match", "hit"), [
    ({"extension": ["exe"]}, True),  # invoice.pdf.exe: the last extension counts
    ({"extension": [".EXE"]}, True),
    ({"extension": ["pdf"]}, True),  # "Q2 report.pdf"
    ({"filename": ["*.pdf.*"]}, True),
    ({"filename": ["invoice*"], "extension": ["pdf"]}, False),  # both keys, same part
    ({"mime_type": ["application/octet-stream"], "sniffed_type": ["executable"]}, True),
    ({"mime_type": ["application/pdf"], "sniffed_type": ["executable"]}, False),
    ({"sniffed_type": ["pdf"], "min_size": 10}, True),
    ({"sniffed_type": ["pdf"], "min_size": 100_000}, False),
])
def test_part_keys_on_the_outlook_sample(match: dict, hit: bool) -> None:
    rule = _rule(**match)
    assert any(part_matches(rule.match, part) for part in _parts("outlook_mixed.eml")) is hit


def test_renamed_executable_is_caught_by_its_content() -> None:
    parts = _parts("renamed_exe.eml")
    assert not any(part_matches(_rule(extension=["exe"]).match, p) for p in parts)
    found = [part_matches(_rule(sniffed_type=["executable"]).match, p) for p in parts]
    assert found == [[], ["content: pe"]]


def test_names_inside_zips_only_with_in_zip() -> None:
    parts = _parts("zip_with_exe.eml")
    assert not any(part_matches(_rule(extension=["exe"]).match, p) for p in parts)
    assert part_matches(_rule(extension=["exe"], in_zip=True).match, parts[1]) == ["payload.exe"]
    nested = _parts("zip_nested.eml")[0]
    assert "hidden.exe" in part_matches(_rule(extension=["exe"], in_zip=True).match, nested)
    kinds = part_matches(_rule(sniffed_type=["executable"], in_zip=True).match, nested)
    assert "content: pe in zip (renamed.txt)" in kinds


def test_rfc2231_names_match_case_insensitively() -> None:
    parts = _parts("rfc2231_names.eml")
    assert part_matches(_rule(filename=["счет.*"]).match, parts[1]) == ["счет.exe"]
    assert part_matches(_rule(extension=["scr"]).match, parts[2]) == ["акт № 1.pdf.scr"]


def test_name_normalisation() -> None:
    assert normal_name("Invoice.PDF.exe. ") == "invoice.pdf.exe"
    assert normal_name("photo\u202egpj.exe") == "photogpj.exe"
