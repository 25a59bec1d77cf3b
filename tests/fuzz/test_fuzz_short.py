"""The short fuzzing run of the normal test command: each atheris harness of tests/fuzz/ for
about ten seconds (MAILGATE_FUZZ_SECONDS) from its committed seeds, in its own process.

A crash (an exception, or a broken invariant) fails the test with the harness's traceback, the
crashing input in Base64 and the command that replays it. The long runs are scripts/fuzz.

The run starts from a fixed libFuzzer seed (MAILGATE_FUZZ_SEED, 0 for a random one), so the inputs
it tries are the same sequence on every machine and a slower machine tries a prefix of it: the
test suite does not fail at random on a finding a lucky draw made. Finding new bugs is the long
runs' job; whatever they find becomes a unit test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuzz.campaign import HARNESSES, run

SECONDS = int(os.environ.get("MAILGATE_FUZZ_SECONDS", "10"))
SEED = int(os.environ.get("MAILGATE_FUZZ_SEED", "20261205"))


@pytest.mark.timeout(SECONDS * 2 + 150)
@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_harness_finds_nothing_in_a_short_run(name: str, tmp_path: Path) -> None:
    result = run(name, SECONDS, tmp_path / "corpus", tmp_path / "crashes", seed=SEED)
    assert not result.crashed, result.describe_crashes()
    assert result.executions > 0, f"{name} ran no input:\n{result.output_tail}"
