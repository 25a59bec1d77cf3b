"""The MIME walk's limits scaled down by three input bytes, shared by fuzz_mime and fuzz_screen
(each runs as a script from this folder, so it imports this module by its bare name).

Owns: mapping the first three octets of a fuzz input to small values of screen/mime.py's bounds
and of screen/leaf.py's MAX_TEXT_CHARS, so that the harnesses reach every bound with short inputs,
and splitting an input into those limits and the message (`small_input`). Must not: import mailgate (the
harnesses import it inside atheris' instrumentation).
"""

from __future__ import annotations


def small_limits(a: int, b: int, c: int) -> dict[str, int]:
    return {
        "READ_CHUNK": 1 + (a & 31),
        "MAX_LINE": 8 + (a >> 5) * 40,
        "MAX_NESTING": 1 + (b & 7),
        "MAX_ENTITIES": 2 + (b >> 3),
        "MAX_HEADER_BYTES": 64 + (c & 15) * 64,
        "MAX_PARAM_FIELD": 32 + (c >> 4) * 32,
        "MAX_PARAMS": 1 + (c >> 4),
    }


def small_input(data: bytes) -> tuple[dict[str, int], int, bytes] | None:
    """(the small mime.py limits, a small MAX_TEXT_CHARS, the message) of a fuzz input; None for an
    input shorter than the three octets that pick the limits."""
    if len(data) < 3:
        return None
    a, b, c = data[:3]
    return small_limits(a, b, c), 8 + (c & 15) * 16, data[3:]
