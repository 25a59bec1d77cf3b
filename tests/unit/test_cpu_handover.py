"""When a worker gives up the CPU after an end-of-data reply: only when lightly loaded."""

from __future__ import annotations

import pytest

from mailgate.server import cpu_handover
from mailgate.server.cpu_handover import QUIET_SECONDS, CpuHandover


@pytest.fixture
def yields(monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], list[float]]:
    """(the clock's next readings, the times a yield happened)."""
    readings: list[float] = []
    yielded: list[float] = []
    now = [0.0]

    def monotonic() -> float:
        now[0] = readings.pop(0)
        return now[0]

    monkeypatch.setattr(cpu_handover.time, "monotonic", monotonic)
    monkeypatch.setattr(cpu_handover.os, "sched_yield", lambda: yielded.append(now[0]))
    return readings, yielded


def test_the_first_reply_and_one_after_a_quiet_spell_yield(yields) -> None:
    readings, yielded = yields
    readings += [100.0, 100.0 + 2 * QUIET_SECONDS, 100.0 + 10 * QUIET_SECONDS]
    handover = CpuHandover()
    for _ in range(3):
        handover.after_end_of_data_reply()
    assert yielded == [100.0, 100.0 + 2 * QUIET_SECONDS, 100.0 + 10 * QUIET_SECONDS]


def test_a_burst_of_ends_of_data_yields_once(yields) -> None:
    """Under load every reply follows the previous one within QUIET_SECONDS: no yield, even if
    the burst lasts far longer than QUIET_SECONDS in all."""
    readings, yielded = yields
    step = QUIET_SECONDS / 4
    readings += [200.0 + index * step for index in range(100)]
    handover = CpuHandover()
    for _ in range(100):
        handover.after_end_of_data_reply()
    assert yielded == [200.0]
