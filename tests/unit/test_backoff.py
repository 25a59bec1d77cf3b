"""Retry schedule and queue ids: jittered, capped delays; expiry; id shape and ordering."""

from __future__ import annotations

import dataclasses
import random

import pytest

from mailgate.queue_config import retry_schedule
from mailgate.config.loader import load_embedded
from mailgate.queue.backoff import RetrySchedule
from mailgate.queue.ids import QUEUE_ID_LENGTH, is_queue_id, new_queue_id


def default_schedule(**overrides: object) -> RetrySchedule:
    """The schedule of the schema's defaults (config/schema.py declares them, nowhere else)."""
    return dataclasses.replace(retry_schedule(load_embedded()), **overrides)


def test_base_delay_follows_steps_then_doubles_up_to_the_cap() -> None:
    schedule = default_schedule()
    assert [schedule.base_delay(n) for n in range(0, 9)] == [
        0.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 14400.0,
    ]  # fmt: skip
    assert schedule.base_delay(10_000) == 4 * 3600


def test_jitter_stays_within_its_fraction_and_varies() -> None:
    schedule = default_schedule()
    rng = random.Random(1234)
    delays = [schedule.next_delay(2, rng) for _ in range(500)]
    assert all(240.0 <= delay <= 360.0 for delay in delays)  # 300 s +/- 20 %
    assert len({round(delay, 3) for delay in delays}) > 400
    assert min(delays) < 250 and max(delays) > 350  # the whole band is used


def test_same_seed_gives_same_delays() -> None:
    schedule = default_schedule()
    first = [schedule.next_delay(n, random.Random(7)) for n in range(1, 10)]
    second = [schedule.next_delay(n, random.Random(7)) for n in range(1, 10)]
    assert first == second


def test_jitter_never_exceeds_the_cap_nor_goes_negative() -> None:
    schedule = RetrySchedule(steps=(0.0, 10.0), max_interval=100.0, max_lifetime=3600.0, jitter=1.0)
    rng = random.Random(99)
    for attempts in range(0, 40):
        for _ in range(50):
            delay = schedule.next_delay(attempts, rng)
            assert 0.0 <= delay <= 100.0
    assert schedule.next_delay(1, rng) == 0.0  # a zero step stays zero whatever the jitter


def test_next_attempt_is_absolute() -> None:
    schedule = default_schedule(jitter=0.0)
    assert schedule.next_attempt(1, 1000.0, random.Random(0)) == 1060.0


def test_expired_after_the_default_five_days() -> None:
    schedule = default_schedule()
    created = 1_800_000_000.0
    assert not schedule.expired(created, created + 5 * 86400 - 1)
    assert schedule.expired(created, created + 5 * 86400)
    assert schedule.given_up_at(created) == created + 5 * 86400
    short = default_schedule(max_lifetime=3600.0)
    assert short.expired(created, created + 3600) and not short.expired(created, created + 3599)


@pytest.mark.parametrize(
    "kwargs",
    [{"steps": ()}, {"steps": (-1.0,)}, {"jitter": 1.5}, {"max_interval": -1}, {"max_lifetime": 0}],
)
def test_nonsense_schedules_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        default_schedule(**kwargs)


def test_queue_ids_are_well_formed_unique_and_sort_by_time() -> None:
    ids = [new_queue_id(1_800_000_000.0 + n) for n in range(200)]
    assert all(len(item) == QUEUE_ID_LENGTH and is_queue_id(item) for item in ids)
    assert ids == sorted(ids)
    # Never a repeat within one process (30 random bits repeated once in about 90 runs of 5,000).
    same_instant = {new_queue_id(1_800_000_000.0) for _ in range(100_000)}
    assert len(same_instant) == 100_000
    assert not is_queue_id("1M8FFT2NKA40N1I")  # I is not in Crockford's alphabet
    assert not is_queue_id("short")


def test_a_forked_worker_draws_its_own_queue_id_tag() -> None:
    """Workers are forked from the supervisor: each must make other ids than its parent."""
    import os

    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, new_queue_id(1_800_000_000.0).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    child_id = os.read(read, 64).decode()
    os.close(read)
    parent_id = new_queue_id(1_800_000_000.0)
    assert is_queue_id(child_id) and child_id[9:12] != parent_id[9:12]  # tag and counter top: 1 in 32,768 alike
