"""A private rspamd (Debian's rspamd package) for tests and the benchmark.

Owns: a minimal, self-contained configuration under one temporary directory, starting rspamd in
the foreground with one "normal" worker on a loopback port, waiting for /ping, and stopping it by
its PID. The minimal configuration that works with Debian 12's rspamd 3.4 and no redis:
  * none of /etc/rspamd is included, so no module needs redis or the network (no RBL/SURBL,
    DNS points at a closed loopback port unless a test names its LoopbackDnsServer), and the
    stock Lua rules are not loaded; C modules only when asked (`filters="dkim"`: rspamd as an
    independent DKIM verifier of mailgate's signatures);
  * `url_tld` names a three-line file instead of the 9,600-suffix list (start-up 25 s -> ~3 s);
  * `enable_test_patterns` turns on the GTUBE family: `XJS*...` reject, `YJS*...` add header,
    `ZJS*...` rewrite subject (rspamd libmime, "gtube");
  * one Lua prefilter: a Subject `mailgate-rspamd-test: <action>` sets that action as the
    pre-result, which is how soft reject and greylist are reached without redis.
rspamd refuses to run workers as root unless `-i` is given; the tests run as root, so it is.
Must NOT: touch the system rspamd (/etc/rspamd, /var/lib/rspamd) or listen beyond 127.0.0.1.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
import http.client
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
TEST_SUBJECT_PREFIX = "mailgate-rspamd-test: "
_GTUBE_TAIL = "JS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE_REJECT = "X" + _GTUBE_TAIL
GTUBE_ADD_HEADER = "Y" + _GTUBE_TAIL
GTUBE_REWRITE_SUBJECT = "Z" + _GTUBE_TAIL
SPAM_SUBJECT_PREFIX = "***SPAM*** "

_TEST_RULE = """
rspamd_config:register_symbol({
  name = 'MAILGATE_TEST_ACTION',
  type = 'prefilter',
  priority = 10,
  callback = function(task)
    local subject = task:get_subject() or ''
    local action = subject:match('^mailgate%-rspamd%-test: (.+)$')
    if action then
      task:set_pre_result(action, 'mailgate test: ' .. action)
    end
  end
})
"""


def _config(root: Path, port: int, dns_port: int = 1, filters: str = "") -> str:
    return f"""
lua = "{root}/test.lua";
options {{
  pidfile = "{root}/rspamd.pid";
  filters = "{filters}";
  dns {{ nameserver = ["127.0.0.1:{dns_port}"]; timeout = 0.2s; retransmits = 1; }}
  enable_test_patterns = true;
  hs_cache_dir = "{root}";
  cache_file = "{root}/symbols.cache";
  url_tld = "{root}/tld.dat";
  tempdir = "{root}";
}}
logging {{ type = "file"; filename = "{root}/rspamd.log"; level = "info"; }}
actions {{ reject = 15; add_header = 6; rewrite_subject = 8; greylist = 4; subject = "{SPAM_SUBJECT_PREFIX}%s"; }}
worker "normal" {{ bind_socket = "127.0.0.1:{port}"; count = 1; }}
"""


@dataclass
class RspamdInstance:
    root: Path
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.root / "rspamd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the main process stops its workers
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "RspamdInstance":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ping(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)  # no proxy settings
    try:
        connection.request("GET", "/ping")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def start_rspamd(binary: str, port: int, *, dns_port: int = 1, filters: str = "") -> RspamdInstance:
    """`dns_port`: a loopback DNS server (a LoopbackDnsServer) for modules that look things up;
    `filters`: rspamd's C modules to load, e.g. "dkim" (DKIM verification)."""
    root = Path(tempfile.mkdtemp(prefix="mailgate-rspamd-"))
    (root / "test.lua").write_text(_TEST_RULE)
    (root / "tld.dat").write_text("com\nexample\ntest\n")
    config = root / "rspamd.conf"
    config.write_text(_config(root, port, dns_port, filters))
    variables = [f"--var={name}={root}" for name in ("DBDIR", "RUNDIR", "LOGDIR")]
    process = subprocess.Popen([binary, "-f", "-i", "-c", str(config), *variables],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    instance = RspamdInstance(root, process, port)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = instance.log()
            instance.stop()
            raise RuntimeError(f"rspamd exited with {process.returncode}: {log[-2000:]}")
        if _ping(port):
            return instance
        time.sleep(0.2)
    log = instance.log()
    instance.stop()
    raise RuntimeError(f"rspamd did not answer /ping within {START_TIMEOUT_S}s: {log[-2000:]}")
