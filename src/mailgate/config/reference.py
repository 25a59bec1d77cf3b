"""The configuration reference (docs/configuration.md), generated from the schema.

Owns: rendering `schema.SECTIONS` as Markdown. A test compares the file in docs/ with this
output, so the reference can never drift from the code. Must not: hold any key or default itself.
"""

from __future__ import annotations

from mailgate.config.schema import REQUIRED, SECTIONS

HEADER = """# Configuration reference

Generated from `src/mailgate/config/schema.py` by `mailgate config reference`; do not edit by hand
(a test fails when this file is stale). mailgate reads one TOML file (`mailgate serve --config FILE`);
unknown keys are errors, and `mailgate config check FILE` lists every error with its key path.
An annotated example is in [example.toml](example.toml).

A reload (SIGHUP, `systemctl reload mailgate`) applies every key at once, except those marked
**restart**: a reload keeps their running value and logs a warning naming each one that changed.
Adding or removing a `[[listener]]`, or switching one to or from implicit TLS, also takes a restart.
"""


def render_reference() -> str:
    parts = [HEADER]
    for section in SECTIONS:
        title = f"[[{section.name}]]" if section.array else f"[{section.name}]"
        parts.append(f"\n## `{title}`\n\n{section.doc}\n\n")
        parts.append("| key | type | default | meaning |\n| --- | --- | --- | --- |\n")
        for key in section.keys:
            default = "required" if key.default is REQUIRED else f"`{key.kind.render(key.default)}`"
            doc = key.doc.replace("|", "\\|") + (" **restart**" if key.restart else "")
            parts.append(f"| `{key.name}` | {key.kind.describe()} | {default} | {doc} |\n")
    return "".join(parts)
