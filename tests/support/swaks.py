"""Run swaks (the Swiss Army Knife for SMTP) against a server and return what happened.

Owns: building one swaks command line from typed options and running it with a bounded time.
Must NOT: interpret the dialogue beyond what tests commonly need (the exit code swaks documents and
the server's reply lines); assertions belong in the tests.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Literal, NamedTuple

SWAKS = "/usr/bin/swaks"

# Exit codes documented in swaks(1), section EXIT CODES.
EXIT_OK = 0
EXIT_CONNECT_FAILED = 2
EXIT_MAIL_REFUSED = 23
EXIT_NO_RCPT_ACCEPTED = 24
EXIT_DATA_REFUSED = 26
EXIT_AUTH_FAILED = 28
EXIT_TLS_FAILED = 29

TlsMode = Literal["none", "starttls", "implicit"]


class SwaksResult(NamedTuple):
    exit_code: int
    transcript: str

    def server_lines(self) -> list[str]:
        """The server's reply lines ("<-" in clear, "<~" inside TLS), without the arrow."""
        return [
            line.partition(" ")[2].strip()
            for line in self.transcript.splitlines()
            if line.startswith(("<- ", "<~ ", "<** ", "<~* "))
        ]


def run_swaks(
    host: str,
    port: int,
    *,
    sender: str,
    recipients: Sequence[str],
    tls: TlsMode = "none",
    ca_file: str | None = None,
    auth: tuple[str, str] | None = None,
    helo: str = "swaks.test",
    body: str = "A test message sent by swaks.",
    quit_after: str | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
    swaks: str = SWAKS,
) -> SwaksResult:
    """One SMTP transaction by swaks; returns its exit code and full transcript.

    `tls`: "starttls" requires STARTTLS (RFC 3207), "implicit" speaks TLS from the first byte
    (RFC 8314). `ca_file` turns on certificate verification against that CA. `auth` is
    (user, password), any mechanism the server offers. `quit_after` is a swaks stop point
    (CONNECT, EHLO, TLS, AUTH, MAIL, RCPT, ...).
    """
    command = [
        swaks,
        "--server", host,
        "--port", str(port),
        "--from", sender,
        "--to", ",".join(recipients),
        "--helo", helo,
        "--body", body,
        "--timeout", f"{timeout:g}",
    ]
    if tls == "starttls":
        command.append("--tls")
    elif tls == "implicit":
        command.append("--tls-on-connect")
    if ca_file is not None:
        command += ["--tls-verify", "--tls-ca-path", ca_file]
    if auth is not None:
        command += ["--auth", "--auth-user", auth[0], "--auth-password", auth[1]]
    if quit_after is not None:
        command += ["--quit-after", quit_after]
    command += list(extra_args)
    completed = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=timeout * 3,
        check=False,
    )
    return SwaksResult(completed.returncode, completed.stdout)
