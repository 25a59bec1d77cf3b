"""Coverage-guided fuzzing of the bounded MIME walk (screen/mime.py with leaf.py, archives.py
and sniff.py): arbitrary messages, walked under small limits so that small inputs reach them.

Input layout: bytes 0-2 pick the limits (read size, line piece, nesting, entities, header
section, text per part, parameter field); the rest is the message as spooled.

Each message is walked three times: with the small limits and a tiny read size (A), with the
small limits and the normal read size (B), and with the shipped limits (C).
Invariants checked (an AssertionError is a finding):
- `walk` never raises (no deadline is given, so not even ScreenTimeout);
- bounds hold: at most MAX_ENTITIES entities, no path deeper than MAX_NESTING, no part text
  longer than MAX_TEXT_CHARS; a container left unopened is reported in `unseen` (fail closed);
- ranges: the root spans the whole message; every entity lies inside it; leaves come in order
  and do not overlap;
- A and B agree exactly: how the file is read never changes what is seen;
- against C: whatever the shipped limits see (leaf types, names, sniffed kinds, zip names, text)
  the small limits see too, unless A reports the matching kind of blind spot in `unseen`;
- strip (screen/actions.py) of one leaf, walked again: one notice stands where the leaf (or its
  enclosing entity in a multipart) was, and every other leaf keeps its type and names.
"""

from __future__ import annotations

import io
import sys

import atheris
from small_limits import small_input

with atheris.instrument_imports(include=["mailgate"]):
    from mailgate.screen import actions, leaf, mime
    from mailgate.screen.bounds import PARTS, TEXT, ZIP_KINDS, ZIP_NAMES
    from mailgate.screen.mime import Needs, walk

SHIPPED = {name: getattr(mime, name) for name in
           ("READ_CHUNK", "MAX_LINE", "MAX_NESTING", "MAX_ENTITIES", "MAX_HEADER_BYTES", "MAX_PARAM_FIELD",
            "MAX_PARAMS")}
SHIPPED_TEXT = leaf.MAX_TEXT_CHARS
EVERYTHING_NEEDED = Needs(decode=True, size=True, text=True, zips=True)


class Finding(AssertionError):
    """An invariant of the MIME walk does not hold."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise Finding(message)


def set_limits(limits: dict[str, int], text: int) -> None:
    for name, value in limits.items():
        setattr(mime, name, value)
    leaf.MAX_TEXT_CHARS = text


def run(message: bytes, limits: dict[str, int], text: int):  # noqa: ANN201
    set_limits(limits, text)
    parts = []
    try:
        result = walk(io.BytesIO(message), EVERYTHING_NEEDED, parts.append)
    finally:
        set_limits(SHIPPED, SHIPPED_TEXT)
    return result, parts


def summary(part) -> tuple:  # noqa: ANN001
    zip_names = tuple(part.zip.names) if part.zip else ()
    kind = part.sniffed.kind if part.sniffed else None
    return (part.path, part.start, part.end, part.content_type, tuple(part.names), part.size, kind, part.text,
            zip_names, part.zip_too_big)


def depth(path: str) -> int:
    return path.count(".") + 1 if path else 0


def check_bounds(message: bytes, result, parts, limits: dict[str, int], text: int) -> None:  # noqa: ANN001
    entities = result.entities
    check(len(entities) <= limits["MAX_ENTITIES"], f"{len(entities)} entities, limit {limits['MAX_ENTITIES']}")
    check(all(depth(path) <= limits["MAX_NESTING"] for path in entities), "a path deeper than MAX_NESTING")
    check(entities.get("") is not None and (entities[""].start, entities[""].end) == (0, len(message)),
          f"root entity {entities.get('')} for a message of {len(message)}")
    for path, entity in entities.items():
        # An entity cut short by a delimiter right after its delimiter line ends before it starts:
        # the line break it would end with is the one that ended that line (RFC 2046 §5.1.1).
        shared = message[entity.end:entity.start] if entity.end < entity.start else b""
        check(0 <= entity.start <= entity.end <= len(message) or shared in (b"\r\n", b"\n"),
              f"entity {path} at {entity}")
    previous_end = 0
    unseen_paths = {unseen.path for unseen in result.unseen}
    for part in parts:
        check(part.path in entities, f"leaf {part.path} missing from the entity table")
        check((entities[part.path].start, entities[part.path].end) == (part.start, part.end),
              f"leaf {part.path} range differs from its entity")
        check(previous_end <= part.start, f"leaf {part.path} overlaps or goes backwards")
        previous_end = max(part.start, part.end)
        check(part.text is None or len(part.text) <= text, f"text of {len(part.text or '')} chars, limit {text}")
        unopened = (part.content_type.startswith("multipart/") and part.headers.get_boundary()) or (
            part.content_type == "message/rfc822" and mime._encoding(part.headers) in mime._IDENTITY_ENCODINGS)
        if unopened:
            check(part.path in unseen_paths, f"container {part.path} left unopened and not reported unseen")


def blind(result, *kinds: str) -> bool:  # noqa: ANN001
    return any(unseen.what & set(kinds) for unseen in result.unseen)


def check_against_shipped(small, small_parts, full, full_parts) -> None:  # noqa: ANN001
    """What the shipped limits see, the small ones see too, or they say where they were blind."""
    if blind(small, PARTS):
        return
    seen = {(p.content_type, tuple(p.names), p.sniffed.kind if p.sniffed else None) for p in small_parts}
    for part in full_parts:
        found = (part.content_type, tuple(part.names), part.sniffed.kind if part.sniffed else None)
        check(found in seen, f"part {part.path} {found} seen only with the shipped limits, nothing reported unseen")
    if not blind(small, TEXT):
        texts = {p.text for p in small_parts}
        check(all(p.text in texts for p in full_parts), "text seen only with the shipped limits, TEXT not reported")
    if not blind(small, ZIP_NAMES, ZIP_KINDS):
        names = {name for p in small_parts if p.zip for name in p.zip.names}
        check(all(name in names for p in full_parts if p.zip for name in p.zip.names),
              "zip names seen only with the shipped limits, not reported")


def check_strip(message: bytes, result, parts, pick: int) -> None:  # noqa: ANN001
    """Strip one leaf as a strip rule would: every other leaf keeps its type and names, and the
    removed one (or the enclosing entity that sits in a multipart) becomes one text/plain notice."""
    if not parts or result.unseen:
        return
    target = parts[pick % len(parts)]
    removals = actions.plan_removals({target.path: (tuple(target.names), "fuzz")}, result.entities)
    out = bytearray()
    actions.write_stripped(lambda: io.BytesIO(message), removals, result.line_ending, out.extend)
    again: list = []
    walk(io.BytesIO(bytes(out)), EVERYTHING_NEEDED, again.append)
    [removal] = removals
    if removal.is_root:
        check([p.content_type for p in again] == ["text/plain"], f"root strip left {len(again)} leaves")
        return
    kept = [(p.content_type, tuple(p.names)) for p in parts
            if not (p.path == removal.path or p.path.startswith(removal.path + "."))]
    notices = [p for p in again if p.text is not None and p.text.startswith("mailgate removed")]
    check(len(notices) == 1, f"{len(notices)} notices after stripping {removal.path}")
    seen = [(p.content_type, tuple(p.names)) for p in again if p is not notices[0]]
    check(seen == kept, f"strip of {removal.path} changed the other leaves: {kept} -> {seen}")


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    picked = small_input(data)
    if picked is None:
        return
    small, text, message = picked
    tiny_reads, tiny_parts = run(message, small, text)
    check_bounds(message, tiny_reads, tiny_parts, small, text)
    normal_reads, normal_parts = run(message, dict(small, READ_CHUNK=SHIPPED["READ_CHUNK"]), text)
    check([summary(p) for p in tiny_parts] == [summary(p) for p in normal_parts], "read size changed the leaves")
    check(tiny_reads.entities == normal_reads.entities, "read size changed the entity table")
    check(tiny_reads.unseen == normal_reads.unseen, "read size changed what is reported unseen")
    full, full_parts = run(message, SHIPPED, SHIPPED_TEXT)
    check_bounds(message, full, full_parts, SHIPPED, SHIPPED_TEXT)
    check_against_shipped(tiny_reads, tiny_parts, full, full_parts)
    check_strip(message, full, full_parts, data[0] ^ data[1] ^ data[2])  # which leaf: the limit octets


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
