"""The log writer thread: daily files driven by a fake clock, retention, the disk guard's
suspension, drop-and-count on a full queue, survival of write errors, and several writers
(worker processes) appending to the same files without tearing lines."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from mailgate.core.clock import FakeClock
from mailgate.observe import jsonlog
from mailgate.observe.writer import DatedNaming, LogStream, LogWriter

pytestmark = pytest.mark.timeout(30)

# 2027-01-15 23:59:59 UTC: one second before a rotation.
BEFORE_MIDNIGHT = datetime(2027, 1, 15, 23, 59, 59, tzinfo=timezone.utc).timestamp()


def _dated(directory) -> LogStream:
    return LogStream(
        "w3c", DatedNaming(directory, "ex", "%y%m%d", ".log"), lambda r: f"{r['n']}\n",
        header=lambda when: f"#Date: {when:.0f}\n",
    )


def _json(path) -> LogStream:
    return LogStream("json", jsonlog.naming(path), lambda r: f"{r['n']}\n")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(BEFORE_MIDNIGHT)


def _run(writer: LogWriter, stream: LogStream, clock: FakeClock, steps) -> None:
    writer.start()
    try:
        for n, advance in enumerate(steps):
            clock.advance(advance)
            writer.emit(stream, clock.now(), {"n": n})
        assert writer.flush()
    finally:
        writer.close()


def test_dated_files_rotate_at_utc_midnight_with_a_header_each(tmp_path, clock):
    stream = _dated(tmp_path)
    _run(LogWriter([stream], clock, retention_days=0), stream, clock, [0, 0.5, 1.0, 3600])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex270115.log", "ex270116.log"]
    first = (tmp_path / "ex270115.log").read_text().splitlines()
    second = (tmp_path / "ex270116.log").read_text().splitlines()
    assert first == [f"#Date: {BEFORE_MIDNIGHT:.0f}", "0", "1"]
    assert second == [f"#Date: {BEFORE_MIDNIGHT + 1.5:.0f}", "2", "3"]


def test_json_files_are_named_by_day_beside_the_configured_file(tmp_path, clock):
    stream = _json(tmp_path / "t.jsonl")
    _run(LogWriter([stream], clock, retention_days=0), stream, clock, [0, 2, 86400])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t-20270115.jsonl", "t-20270116.jsonl", "t-20270117.jsonl"]
    assert (tmp_path / "t-20270115.jsonl").read_text() == "0\n"
    assert (tmp_path / "t-20270117.jsonl").read_text() == "2\n"


def test_a_late_record_from_before_midnight_does_not_rotate_back(tmp_path, clock):
    stream = _json(tmp_path / "t.jsonl")
    writer = LogWriter([stream], clock, retention_days=0)
    writer.start()
    writer.emit(stream, BEFORE_MIDNIGHT + 5, {"n": "after"})
    writer.emit(stream, BEFORE_MIDNIGHT, {"n": "late"})
    writer.emit(stream, BEFORE_MIDNIGHT + 6, {"n": "after2"})
    assert writer.flush()
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t-20270116.jsonl"]
    assert (tmp_path / "t-20270116.jsonl").read_text() == "after\nlate\nafter2\n"


def test_writers_in_several_processes_append_whole_lines_to_one_file(tmp_path, clock):
    """Two writers (as two worker processes would) share one day's file; every line survives
    whole, and each writer's opening directives appear (as IIS writes them after a restart)."""
    first, second = _dated(tmp_path), _dated(tmp_path)
    line = lambda r: f"{r['n']}:" + "x" * 300 + "\n"  # noqa: E731
    first.render = second.render = line
    writers = [LogWriter([first], clock, retention_days=0), LogWriter([second], clock, retention_days=0)]
    for writer in writers:
        writer.start()
    for n in range(2000):
        writers[n % 2].emit(first if n % 2 == 0 else second, clock.now(), {"n": n})
    for writer in writers:
        assert writer.flush()
        writer.close()
    lines = (tmp_path / "ex270115.log").read_text().splitlines()
    data = [entry for entry in lines if not entry.startswith("#")]
    assert sorted(int(entry.split(":")[0]) for entry in data) == list(range(2000))
    assert all(entry.endswith("x" * 300) for entry in data)
    assert sum(entry.startswith("#Date") for entry in lines) == 2


def test_retention_removes_only_days_beyond_it(tmp_path, clock):
    w3c_dir = tmp_path / "w3c"
    w3c_dir.mkdir()
    for name in ("ex270101.log", "ex270112.log", "ex270113.log", "ex270115.log", "notes.log"):
        (w3c_dir / name).write_text("x\n")
    json_path = tmp_path / "t.jsonl"
    for name in ("t-20270112.jsonl", "t-20270113.jsonl", "t.jsonl", "t-2027011.jsonl"):
        (tmp_path / name).write_text("x\n")
    writer = LogWriter([_dated(w3c_dir), _json(json_path)], clock, retention_days=3)
    writer.start()  # prunes at start: keeps 13, 14, 15 January
    assert writer.flush()
    writer.close()
    assert sorted(p.name for p in w3c_dir.iterdir()) == ["ex270113.log", "ex270115.log", "notes.log"]
    assert sorted(p.name for p in tmp_path.glob("t*")) == ["t-2027011.jsonl", "t-20270113.jsonl", "t.jsonl"]


def test_rotation_prunes_with_the_new_day(tmp_path, clock):
    (tmp_path / "ex270114.log").write_text("x\n")
    stream = _dated(tmp_path)
    _run(LogWriter([stream], clock, retention_days=2), stream, clock, [0, 2])
    # On 16 January a 2-day retention keeps 15 and 16.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex270115.log", "ex270116.log"]


def test_disk_guard_soft_prunes_hard_suspends_ok_resumes(tmp_path, clock):
    (tmp_path / "ex270101.log").write_text("old\n")
    stream = _dated(tmp_path)
    writer = LogWriter([stream], clock, retention_days=5)
    writer.on_disk_state("soft")  # retention first, still writing
    assert not writer.suspended
    assert not (tmp_path / "ex270101.log").exists()
    writer.on_disk_state("hard")  # then stop writing
    assert writer.suspended
    writer.emit(stream, clock.now(), {"n": "lost-1"})
    writer.emit(stream, clock.now(), {"n": "lost-2"})
    assert writer.suppressed == 2
    writer.on_disk_state("ok")
    assert not writer.suspended
    _run(writer, stream, clock, [0])
    assert (tmp_path / "ex270115.log").read_text().splitlines()[1:] == ["0"]


def test_full_queue_drops_and_counts_without_blocking(tmp_path, clock):
    stream = _dated(tmp_path)
    writer = LogWriter([stream], clock, max_pending=3)  # not started: nothing drains the queue
    for n in range(10):
        writer.emit(stream, clock.now(), {"n": n})
    assert writer.dropped == 7
    writer.start()
    assert writer.flush()
    writer.close()
    assert (tmp_path / "ex270115.log").read_text().splitlines()[1:] == ["0", "1", "2"]


def test_write_errors_are_counted_and_the_thread_survives(tmp_path, clock):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    broken = _dated(blocked / "sub")
    good = _json(tmp_path / "t.jsonl")
    writer = LogWriter([broken, good], clock, retention_days=0)
    writer.start()
    writer.emit(broken, clock.now(), {"n": "lost"})
    writer.emit(good, clock.now(), {"n": "kept"})
    assert writer.flush()
    writer.close()
    assert writer.failed == 1
    assert (tmp_path / "t-20270115.jsonl").read_text() == "kept\n"


def test_dated_naming_ignores_foreign_files(tmp_path):
    naming = DatedNaming(tmp_path, "ex", "%y%m%d", ".log")
    for name in ("ex270115.log", "ex2701.log", "exabcdef.log", "ex27115.log"):
        (tmp_path / name).write_text("")
    assert naming.days_on_disk() == [(date(2027, 1, 15), tmp_path / "ex270115.log")]
