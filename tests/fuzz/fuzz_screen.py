"""Coverage-guided fuzzing of the screener's fail-closed promise (screen/screener.py over the
MIME walk): arbitrary messages against reject rules, screened under small limits and under the
shipped ones.

Input layout: bytes 0-2 pick the small limits (as fuzz_mime.py); the rest is the message.
Rules: reject an `exe` name (also inside zips), reject executable content (also inside zips),
reject a body word, reject a subject word, as `[[screen_rule]]` tables through the
configuration loader.

Invariant (an AssertionError is a finding): a message the screener rejects with the shipped
limits is rejected under the small limits too, by the rule itself or as "not fully inspected"
(issue 13 item 2: a message the screener could not fully inspect never passes a rule unseen).
`screen` never raises, and never answers "screening failed" (an exception inside it).
"""

from __future__ import annotations

import asyncio
import io
import sys

import atheris
from small_limits import small_input

with atheris.instrument_imports(include=["mailgate.screen"]):
    from mailgate.config.loader import load_section
    from mailgate.screen import ScreenContext, leaf, mime
    from mailgate.screen.rules import parse_rules
    from mailgate.screen.screener import SCREENER_RULE, Screener, screener_options

TABLES = [
    {"name": "exe-name", "direction": "both", "action": "reject", "extension": ["exe"], "in_zip": True},
    {"name": "exe-content", "direction": "both", "action": "reject", "sniffed_type": ["executable"],
     "in_zip": True},
    {"name": "body-word", "direction": "both", "action": "reject", "body": ["EICAR"]},
    {"name": "subject-word", "direction": "both", "action": "reject", "subject": ["(?i)invoice"]},
]
SHIPPED = {name: getattr(mime, name) for name in
           ("READ_CHUNK", "MAX_LINE", "MAX_NESTING", "MAX_ENTITIES", "MAX_HEADER_BYTES", "MAX_PARAM_FIELD",
            "MAX_PARAMS")}
SHIPPED_TEXT = leaf.MAX_TEXT_CHARS
CONTEXT = ScreenContext("inbound", "a@sender.test", ["b@hosted.test"], "192.0.2.1", "client.test")
OPTIONS = screener_options(load_section("antivirus", {}), load_section("spam", {}), load_section("screen", {}))
SCREENER = Screener(parse_rules(load_section("screen_rule", TABLES)), None, None, **dict(OPTIONS, workers=1))
LOOP = asyncio.new_event_loop()


class Finding(AssertionError):
    """The screener let through under small limits what it rejects under the shipped ones."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise Finding(message)


def screen(message: bytes, limits: dict[str, int], text: int):  # noqa: ANN201
    for name, value in limits.items():
        setattr(mime, name, value)
    leaf.MAX_TEXT_CHARS = text
    try:
        verdict = LOOP.run_until_complete(SCREENER.screen(CONTEXT, lambda: io.BytesIO(message), len(message)))
    finally:
        for name, value in SHIPPED.items():
            setattr(mime, name, value)
        leaf.MAX_TEXT_CHARS = SHIPPED_TEXT
    check(verdict.rule != SCREENER_RULE, f"screening failed: {verdict.reason}")
    return verdict


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    picked = small_input(data)
    if picked is None:
        return
    small, text, message = picked
    full = screen(message, SHIPPED, SHIPPED_TEXT)
    if full.action != "reject":
        return
    bounded = screen(message, small, text)
    check(bounded.action == "reject",
          f"rejected by {full.rule} ({full.reason}) with the shipped limits, {bounded.action} under {small}")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
