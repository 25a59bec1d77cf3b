"""The short fuzzing run of the normal test command: each atheris harness of tests/fuzz/ for
about ten seconds (MAILGATE_FUZZ_SECONDS) from its committed seeds, in its own process.

A crash (an exception, or a broken invariant) fails the test with the harness's traceback, the
crashing input in Base64 and the command that replays it. The long runs are scripts/fuzz.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuzz.campaign import HARNESSES, run

SECONDS = int(os.environ.get("MAILGATE_FUZZ_SECONDS", "10"))


@pytest.mark.timeout(SECONDS * 2 + 150)
@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_harness_finds_nothing_in_a_short_run(name: str, tmp_path: Path) -> None:
    result = run(name, SECONDS, tmp_path / "corpus", tmp_path / "crashes")
    assert not result.crashed, result.describe_crashes()
    assert result.executions > 0, f"{name} ran no input:\n{result.output_tail}"
