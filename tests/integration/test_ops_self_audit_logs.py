"""The start-up self-audit leaves one summary per listener, not a burst of refusals (issue 20
items 7 and 8): a real `mailgate serve` with two workers and every log on, no client at all.

Before: each start added about 45 INFO "refused" lines per listener, connection and refusal
records in the JSON and W3C logs, "rejected" in `mailgate stats` and Prometheus refusal counters;
and the second worker said "ready" before the audit had run.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from mailgate.cli.main import main
from mailgate.observe.jsonlog import log_files
from tests.conftest import free_port
from tests.support.config_text import hosted_domain, log_and_metrics, relay_config
from tests.support.mailgate_server import MailgateProcess

pytestmark = pytest.mark.timeout(120)


def _config(tmp_path: Path, port: int, metrics_port: int) -> str:
    return relay_config(tmp_path / "spool", port, hosted_domain(f"maildir:{tmp_path / 'mbox'}"),
                        log_and_metrics(tmp_path, metrics_port), server="workers = 2\n")


def _two_free_ports(avoid: int) -> int:
    """A port whose next one is free too: worker N serves its metrics on the port plus N."""
    for _ in range(50):
        candidate = free_port()
        if avoid in (candidate, candidate + 1):
            continue
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", candidate + 1))
            return candidate
        except OSError:
            continue
    raise AssertionError("no two consecutive free ports on 127.0.0.1")


def _wait(condition, what: str, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not seen in {timeout}s: {what}")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for file in log_files(str(path)) if file.exists()
            for line in file.read_text().splitlines() if line.strip()]


def _stamp(line: str) -> datetime:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def test_self_audit_is_one_summary_and_no_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    metrics_port = _two_free_ports(avoid=port)
    mailgate = MailgateProcess(tmp_path, _config(tmp_path, port, metrics_port))
    mailgate.start()
    try:
        log = _wait(lambda: (text := mailgate.log()).count("mailgate ready") >= 2 and text, "two workers ready")
        json_file = tmp_path / "log" / "tx.jsonl"
        records = _wait(lambda: _records(json_file), "the self_audit record")
        metrics = [urllib.request.urlopen(f"http://127.0.0.1:{metrics_port + worker}/metrics", timeout=10).read().decode()
                   for worker in (0, 1)]
        time.sleep(0.3)  # past the diagnostic log's flush interval (0.1 s): every line is written
        log = mailgate.log()
        records = _records(json_file)
    finally:
        assert mailgate.stop() == 0

    assert [r["event"] for r in records] == ["self_audit"], records
    assert records[0]["listener"] == f"127.0.0.1:{port}" and records[0]["verdict"] == "CLOSED"
    assert records[0]["forms"] > 10
    w3c_lines = [line for file in (tmp_path / "w3c").glob("*.log") for line in file.read_text().splitlines()
                 if not line.startswith("#")]
    assert w3c_lines == []
    for text in metrics:
        for line in text.splitlines():
            if re.match(r"mailgate_(transactions_refused|connections_refused|connections)_total\{", line):
                assert line.endswith(" 0.0"), line

    audit_lines = [line for line in log.splitlines() if "127.0.0.2" in line]
    assert len(audit_lines) == 1 and "self-audit:" in audit_lines[0], audit_lines
    audited = _stamp(audit_lines[0])
    ready = [line for line in log.splitlines() if "mailgate ready" in line]
    assert len(ready) == 2 and all(_stamp(line) >= audited for line in ready), log
    pids = {re.search(r"\[(\d+)\]: ", line).group(1) for line in ready}
    assert len(pids) == 2, ready  # each line names its process

    capsys.readouterr()
    assert main(["stats", "--log", str(log_files(str(json_file))[0])]) == 0
    report = capsys.readouterr().out
    assert re.search(r"^\s*0  rejected$", report, re.M), report
