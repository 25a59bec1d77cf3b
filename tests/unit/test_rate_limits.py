"""Message rate limits: the sliding-window counter, its guarantees as properties, bounded memory.

The window tests run on both limiters: `RateLimiter` (one process) and `SharedRateLimiter`
(shared memory every worker counts in, issue 13 item 4); the shared one's own tests follow them.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.core.clock import FakeClock
from mailgate.policy.limits import MessageRateLimits, RateDecision, RateLimiter, Reservation
from mailgate.policy.shared_limits import WAYS, RateTable, SharedRateLimiter

pytestmark = pytest.mark.timeout(60)

HOUR = 3600.0
T0 = 1_800_000_000.0  # a multiple of 3600: the first fixed bucket starts here


def shared(limit: int, window: float) -> SharedRateLimiter:
    return SharedRateLimiter(RateTable(slots=4 * WAYS), limit, window)


limiters = pytest.mark.parametrize("make", [RateLimiter, shared], ids=["local", "shared"])


@limiters
def test_the_limit_holds_within_a_window_and_is_per_key(make) -> None:
    limiter = make(limit=3, window=HOUR)
    assert [limiter.allow("192.0.2.1", T0 + i) for i in range(5)] == [True, True, True, False, False]
    assert limiter.allow("192.0.2.2", T0 + 5)  # another client has its own budget


@limiters
def test_refused_attempts_do_not_count(make) -> None:
    limiter = make(limit=2, window=HOUR)
    assert limiter.allow("k", T0) and limiter.allow("k", T0 + 1)
    for second in range(2, 100):
        assert not limiter.allow("k", T0 + second)
    assert limiter.estimate("k", T0 + 100) == 2


@limiters
def test_the_previous_window_weighs_by_how_much_the_sliding_window_still_covers(make) -> None:
    limiter = make(limit=10, window=HOUR)
    for i in range(10):
        assert limiter.allow("k", T0 + i)
    # Half-way through the next bucket the previous ten count as five: five more are allowed.
    half = T0 + HOUR + HOUR / 2
    assert limiter.estimate("k", half) == pytest.approx(5.0)
    assert [limiter.allow("k", half) for _ in range(6)] == [True] * 5 + [False]
    # A quarter later the previous bucket weighs 2.5, plus 5 current: 7.5, so three more.
    later = half + HOUR / 4
    assert [limiter.allow("k", later) for _ in range(4)] == [True, True, True, False]


@limiters
def test_a_key_silent_for_two_windows_starts_afresh(make) -> None:
    limiter = make(limit=2, window=60)
    assert limiter.allow("k", T0) and limiter.allow("k", T0)
    assert not limiter.allow("k", T0 + 59)
    assert limiter.allow("k", T0 + 120) and limiter.allow("k", T0 + 120)


@limiters
def test_a_clock_going_backwards_never_grants_more(make) -> None:
    limiter = make(limit=2, window=60)
    assert limiter.allow("k", T0 + 30) and limiter.allow("k", T0 + 31)
    assert not limiter.allow("k", T0 - 500)


def test_memory_is_bounded_and_old_keys_expire() -> None:
    limiter = RateLimiter(limit=5, window=60, max_keys=100)
    for index in range(1000):
        limiter.allow(f"10.0.{index // 256}.{index % 256}", T0)
    assert len(limiter) == 100
    # The most recent clients are the ones kept; an evicted one starts afresh (allowed).
    assert limiter.estimate("10.0.3.231", T0) == 1  # index 999
    assert limiter.estimate("10.0.0.0", T0) == 0
    # Long after, every use expires a few stale keys: they all go without any special sweep.
    for step in range(20):
        limiter.allow("fresh", T0 + 10 * 60 + step)
    assert len(limiter) == 1


def test_invalid_settings_are_refused() -> None:
    for args in ((0, 60.0), (1, 0.0), (1, -1.0)):
        with pytest.raises(ValueError):
            RateLimiter(*args)
    with pytest.raises(ValueError):
        RateLimiter(1, 60, max_keys=0)


@limiters
@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 20),
    window=st.sampled_from([1.0, 60.0, 3600.0]),
    gaps=st.lists(st.floats(0, 2.5, allow_nan=False), min_size=1, max_size=300),
)
def test_properties_of_the_sliding_window(make, limit: int, window: float, gaps: list[float]) -> None:
    """No fixed bucket holds more than `limit` allowed events, no sliding window more than twice
    that, and after 2 x window of silence the next event is allowed."""
    limiter = make(limit, window)
    clock = FakeClock(T0)
    allowed: list[float] = []
    last_allowed: float | None = None
    for gap in gaps:
        clock.advance(gap * window / 4)
        now = clock.now()
        silent_long = last_allowed is None or now - last_allowed >= 2 * window
        ok = limiter.allow("k", now)
        if silent_long:
            assert ok
        if ok:
            allowed.append(now)
            last_allowed = now
    per_bucket: dict[int, int] = {}
    for moment in allowed:
        index = int((moment - T0) // window)
        per_bucket[index] = per_bucket.get(index, 0) + 1
    assert max(per_bucket.values()) <= limit
    for start in allowed:
        assert sum(1 for t in allowed if start <= t < start + window) <= 2 * limit


def send(limits: MessageRateLimits, client: str | None, user: str | None) -> str:
    """One message as the session handles it when it is accepted: reserved at MAIL and kept;
    "ok", or the rule that refused it."""
    reserved = limits.reserve(client, user, T0)
    return reserved.rule if isinstance(reserved, RateDecision) else "ok"


def test_message_limits_per_client_and_per_user() -> None:
    limits = MessageRateLimits(RateLimiter(2, HOUR), RateLimiter(3, HOUR))
    assert [send(limits, "192.0.2.1", None) for _ in range(3)] == ["ok", "ok", "rate.client"]
    # A user's messages are limited wherever they come from (the client key None: exempt network).
    assert [send(limits, None, "alice") for _ in range(4)] == ["ok", "ok", "ok", "rate.user"]
    assert send(limits, None, "bob") == "ok"


@limiters
def test_parallel_transactions_cannot_all_pass_the_check(make) -> None:
    """Sessions of one client that reach MAIL FROM at the same moment: each reservation counts
    at once, so no more than the limit get through (a check at MAIL and a count at 250 let all
    ten through)."""
    limits = MessageRateLimits(make(3, HOUR), None)
    reserved = [limits.reserve("192.0.2.1", None, T0) for _ in range(10)]
    assert [isinstance(r, Reservation) for r in reserved] == [True] * 3 + [False] * 7


@limiters
def test_a_released_reservation_counts_no_more(make) -> None:
    """A transaction that ends without a 250 (RSET, refused at RCPT, the self-audit) gives its
    reservation back, whichever bucket now holds it."""
    limits = MessageRateLimits(make(2, HOUR), None)
    for _ in range(50):
        reservation = limits.reserve("192.0.2.1", None, T0)
        assert isinstance(reservation, Reservation)
        reservation.release(T0 + 1)
    first, second = limits.reserve("192.0.2.1", None, T0), limits.reserve("192.0.2.1", None, T0)
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    assert limits.reserve("192.0.2.1", None, T0) == RateDecision(False, "rate.client")
    half = T0 + HOUR + HOUR / 2  # the two now weigh one: one more fits
    assert isinstance(limits.reserve("192.0.2.1", None, half), Reservation)
    assert limits.reserve("192.0.2.1", None, half) == RateDecision(False, "rate.client")
    first.release(half)  # taken back from the previous bucket
    assert isinstance(limits.reserve("192.0.2.1", None, half), Reservation)


def test_a_refusal_by_one_limit_does_not_use_up_the_other() -> None:
    per_client, per_user = RateLimiter(5, HOUR), RateLimiter(1, HOUR)
    limits = MessageRateLimits(per_client, per_user)
    assert send(limits, "192.0.2.1", "alice") == "ok"
    for _ in range(10):
        assert send(limits, "192.0.2.1", "alice") == "rate.user"
    assert per_client.estimate("192.0.2.1", T0) == 1
    # ... so another user on the same address still has the client's remaining four.
    assert [send(limits, "192.0.2.1", f"user{i}") for i in range(5)] == ["ok"] * 4 + ["rate.client"]


def test_limits_switched_off_allow_everything() -> None:
    limits = MessageRateLimits(None, None)
    assert all(send(limits, "192.0.2.1", "alice") == "ok" for _ in range(1000))


def test_shared_limits_hold_across_forked_workers() -> None:
    """Two worker processes count one client in the same table: the limit holds for both
    together (before: each worker counted ceil(limit / workers) on its own)."""
    limiter = SharedRateLimiter(RateTable(), 7, HOUR)
    children = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:  # a worker: tries far more than the limit
            allowed = sum(limiter.allow("192.0.2.1", T0 + i / 100) for i in range(50))
            os._exit(allowed)
        children.append(pid)
    allowed = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    assert sum(allowed) == 7
    assert limiter.estimate("192.0.2.1", T0 + 1) == 7


def test_shared_keys_in_one_set_keep_their_own_counts() -> None:
    """One set of ways: keys that fall into it are told apart by their fingerprints."""
    limiter = SharedRateLimiter(RateTable(slots=WAYS), 2, HOUR)
    keys = [f"10.0.0.{i}" for i in range(WAYS)]
    for key in keys:
        assert limiter.allow(key, T0)
    assert all(limiter.estimate(key, T0) == 1 for key in keys)
    assert all(limiter.allow(key, T0) for key in keys)
    assert not any(limiter.allow(key, T0) for key in keys)


def test_a_full_set_gives_up_the_least_counted_way() -> None:
    """Memory is bounded: a new key takes the way counting least, never a busy sender's."""
    limiter = SharedRateLimiter(RateTable(slots=WAYS), 5, HOUR)
    busy = "198.51.100.1"
    for _ in range(5):
        limiter.record(busy, T0)
    for index in range(100):  # a spray of one-message clients
        limiter.record(f"10.0.{index // 256}.{index % 256}", T0)
    assert not limiter.would_allow(busy, T0)
    assert limiter.estimate(busy, T0) == 5
    # An expired way is reused first: long after, the busy sender starts afresh.
    assert limiter.allow(busy, T0 + 3 * HOUR)


def test_a_reload_keeps_what_the_shared_table_counted() -> None:
    """A reload builds new limiters over the same table (app.py): counts survive, the new limit applies."""
    table = RateTable(slots=4 * WAYS)
    before = SharedRateLimiter(table, 3, HOUR)
    for _ in range(3):
        assert before.allow("k", T0)
    assert not SharedRateLimiter(table, 3, HOUR).would_allow("k", T0)
    assert SharedRateLimiter(table, 4, HOUR).allow("k", T0)


def test_invalid_shared_settings_are_refused() -> None:
    for args in ((0, 60.0), (1, 0.0)):
        with pytest.raises(ValueError):
            SharedRateLimiter(RateTable(slots=WAYS), *args)
    with pytest.raises(ValueError):
        RateTable(slots=WAYS + 1)
