"""The two ways `mailgate serve` (and the commands that build what it builds) refuse to start.

Owns: `StartupError` (the configuration: each line names the key at fault; exit 2, retrying
cannot help) and `StartupConflict` (another process holds what this one needs; exit 1, a service
manager retries). Must not: import anything: the queue commands raise and catch these without
loading the composition (app_config.py).
"""

from __future__ import annotations


class StartupError(Exception):
    """mailgate cannot start; each line names the configuration key and the problem."""


class StartupConflict(Exception):
    """mailgate cannot start because another process holds what it needs (the node's name in the
    cluster queue); that process may go away, so it is exit 1 and a service manager retries."""
