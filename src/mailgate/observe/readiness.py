"""What /readyz reports: every reason this worker should not be sent mail right now.

Owns: gathering the problems of the listeners (not listening), the spool (not writable), the
disk guard (back-pressure) and the screener's scanners (a fail-closed one failing), one line each.
Must not: fix anything, or serve HTTP (http.py does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailgate.observe.http import spool_problem


def readiness_problems(listeners: Sequence[Any], spool_dir: str, disk: Any, screener: Any) -> list[str]:
    """`listeners` have .listening and .settings.name; `disk` .accepting_mail and .state.label;
    `screener` is None or has .health.problems()."""
    problems = [f"listener {l.settings.name} not listening" for l in listeners if not l.listening]
    spool = spool_problem(spool_dir)
    if spool:
        problems.append(spool)
    if not disk.accepting_mail:
        problems.append(f"disk back-pressure: {disk.state.label}")
    if screener is not None:
        problems += screener.health.problems()
    return problems
