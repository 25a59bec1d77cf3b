"""Run a real mailgate for tests: in a thread of the test process, or as a child process.

`InProcessMailgate` runs `Application` on its own event loop in a background thread (fast, and
the test can inspect the store); `MailgateProcess` runs `python -m mailgate serve --config` as a
child so tests can SIGTERM or SIGKILL it like an admin or a crash would.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from mailgate.app import Application
from mailgate.config.loader import load_text


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Until the port greets with 220: a server that listens but still holds clients with
    `421 4.3.2` (its start-up self-audit is running) is not ready yet. A listener that sends
    nothing at once (implicit TLS waits for the client's hello) counts as ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5) as sock:
                try:
                    banner = sock.recv(3)
                except TimeoutError:
                    return
                if banner == b"220":
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"nothing greets with 220 on {host}:{port} after {timeout}s")


class InProcessMailgate:
    """`with InProcessMailgate(config_text) as mg:` ... `mg.call(coro)` runs on its loop."""

    def __init__(self, config_text: str) -> None:
        self.config = load_text(config_text, source="<test>")
        self.app: Application | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> "InProcessMailgate":
        self._thread.start()
        self.app = self.call(self._create())
        return self

    async def _create(self) -> Application:
        app = Application(self.config)
        await app.start()
        return app

    def call(self, coroutine, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def port(self, name: str) -> int:
        assert self.app is not None
        return next(l.bound_port for l in self.app.listeners if l.settings.name == name)

    def __exit__(self, *exc_info) -> None:
        if self.app is not None:
            self.call(self.app.stop(grace=2.0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class MailgateProcess:
    """A mailgate child process on a config file in `workdir`."""

    def __init__(self, workdir: Path, config_text: str, max_open_files: int | None = None) -> None:
        self.max_open_files = max_open_files  # RLIMIT_NOFILE for the child, e.g. to run out of descriptors
        self.workdir = Path(workdir)
        self.config_path = self.workdir / "mailgate.toml"
        self.config_path.write_text(config_text)
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "mailgate.log"

    def start(self, wait: tuple[str, int] | None = None) -> "MailgateProcess":
        """With `wait`: return once the port answers AND a worker said "mailgate ready" (until its
        self-audit has passed, every client gets 421 4.3.2)."""
        ready_before = self.log().count("mailgate ready")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailgate", "serve", "--config", str(self.config_path)],
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() takes the workers too
            preexec_fn=self._limit_open_files if self.max_open_files else None,
        )
        if wait:
            try:
                wait_for_port(*wait)
                self._wait_ready(ready_before)
            except TimeoutError:
                self.stop()
                raise RuntimeError("mailgate did not start:\n" + self.log_path.read_text()) from None
        return self

    def _limit_open_files(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.max_open_files, self.max_open_files))

    def _wait_ready(self, ready_before: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count("mailgate ready") <= ready_before:
            if time.monotonic() > deadline or (self.process is not None and self.process.poll() is not None):
                raise TimeoutError("mailgate never said ready")
            time.sleep(0.05)

    def kill(self) -> None:
        """A crash: SIGKILL to the supervisor and every worker at once, no chance to clean up."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode if self.process else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def readyz(port: int) -> tuple[int, str]:
    """GET /readyz of the observation endpoint on 127.0.0.1:`port`: (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
