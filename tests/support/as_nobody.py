"""Run a `mailgate` command as an unprivileged user (nobody, uid 65534), as a service user would.

When the tests run as root (CI), the command runs in a forked child that switched to uid and gid
65534; otherwise the child simply is the current, already unprivileged user.
"""

from __future__ import annotations

import io
import os
import sys
import traceback

import mailgate.preflight  # noqa: F401  imported as root: nobody may not read the checkout
from mailgate.cli.main import main

NOBODY = 65534


def run_as_nobody(argv: list[str]) -> tuple[int, str]:
    """`mailgate ARGV` in a forked child that is not root (uid 65534 when the tests run as root)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        code = 1
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            sys.stderr = io.TextIOWrapper(os.fdopen(write_end, "wb"), write_through=True)
            sys.stdout = sys.stderr
            code = main(argv)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output
