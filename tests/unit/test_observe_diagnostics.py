"""The diagnostic log's thread: the loop only keeps records; the thread writes them in batches."""

from __future__ import annotations

import logging
import time

from mailgate.observe import diagnostics


class Collecting(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def wait_for(predicate, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_records_reach_the_handlers_from_the_thread_and_stop_writes_the_rest(monkeypatch) -> None:
    monkeypatch.setattr(diagnostics, "FLUSH_INTERVAL", 30.0)  # only a warning or stop() can flush
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    for handler in saved_handlers:
        root.removeHandler(handler)
    collecting = Collecting()
    root.addHandler(collecting)
    root.setLevel(logging.DEBUG)
    try:
        stop = diagnostics.off_the_loop()
        assert collecting not in root.handlers  # the loop's logger no longer writes itself
        log = logging.getLogger("mailgate.test")
        log.debug("below the handler's level")
        log.info("queued %s", "A1")
        time.sleep(0.2)
        assert collecting.lines == []  # kept until the next flush: the caller did no I/O
        log.warning("disk %s", "low")  # a warning wakes the thread at once
        assert wait_for(lambda: collecting.lines == ["queued A1", "disk low"])
        for n in range(50):
            log.info("line %d", n)
        stop()  # writes what is still waiting
        assert collecting.lines[-1] == "line 49" and len(collecting.lines) == 52
        assert collecting in root.handlers  # back as it was
        log.info("after")
        assert collecting.lines[-1] == "after"
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
