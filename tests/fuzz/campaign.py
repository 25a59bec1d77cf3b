"""Runs the atheris harnesses of tests/fuzz/: one short run per harness for the test suite, or
rounds of long runs over a persistent corpus (scripts/fuzz), with the libFuzzer figures read back.

Owns: the list of harnesses and their per-input limits, the libFuzzer command line (new inputs go
to the first corpus directory only, so the committed seeds in tests/fuzz/corpus/<name>/ are read,
never written), parsing of its output (executions, `cov:` and `ft:`, crash files), and the running
totals a long campaign keeps in <root>/stats.json.
Must not: import mailgate (each harness instruments it in its own process) or fuzz in-process.

Usage (see docs/fuzzing.md):
    python -m tests.fuzz.campaign [--seconds 600] [--rounds 1] [--root var/fuzz] [name ...]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "corpus"
PROJECT = HERE.parent.parent


@dataclass(frozen=True)
class Harness:
    name: str
    script: str
    max_len: int  # libFuzzer -max_len: the longest input it makes up
    dictionary: str  # tests/fuzz/dicts/<name>: tokens the mutator inserts


HARNESSES = {h.name: h for h in (
    Harness("smtp_server", "fuzz_smtp_server.py", 8192, "smtp.dict"),
    Harness("smtp_client", "fuzz_smtp_client.py", 4096, "reply.dict"),
    Harness("proxy_header", "fuzz_proxy_header.py", 2200, "proxy.dict"),  # a full version 2 header and more
    Harness("address", "fuzz_address.py", 1024, "smtp.dict"),
    Harness("mime", "fuzz_mime.py", 16384, "mime.dict"),
    Harness("screen", "fuzz_screen.py", 16384, "mime.dict"),
)}
CRASH_PREFIXES = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")
_PROGRESS = re.compile(r"^#(\d+)\s.*?\bcov: (\d+) ft: (\d+)", re.MULTILINE)
_EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)")


@dataclass
class RunResult:
    name: str
    seconds: float
    returncode: int
    executions: int = 0
    cov: int = 0
    ft: int = 0
    crashes: list[str] = field(default_factory=list)  # artifact files written by this run
    output_tail: str = ""

    @property
    def crashed(self) -> bool:
        return self.returncode != 0 or bool(self.crashes)

    def describe_crashes(self) -> str:
        """The harness's own report and each crashing input (Base64), with the replay command."""
        lines = [f"fuzz harness {self.name} failed (exit status {self.returncode}):", self.output_tail]
        for path in self.crashes:
            data = Path(path).read_bytes()
            lines.append(f"input {path} ({len(data)} bytes), Base64: {base64.b64encode(data[:4096]).decode()}")
            lines.append(f"replay: {sys.executable} {HERE / HARNESSES[self.name].script} {path}")
        return "\n".join(lines)


def command(harness: Harness, seconds: int, corpus: Path, artifacts: Path, *, rss_limit_mb: int,
            input_timeout: int, seed: int = 0) -> list[str]:
    seeds = SEEDS / harness.name
    return [
        sys.executable, str(HERE / harness.script),
        *([f"-seed={seed}"] if seed else []),  # 0: libFuzzer draws one
        f"-max_total_time={seconds}", f"-rss_limit_mb={rss_limit_mb}", f"-timeout={input_timeout}",
        f"-max_len={harness.max_len}", f"-dict={HERE / 'dicts' / harness.dictionary}", "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        str(corpus), *([str(seeds)] if seeds.is_dir() else []),
    ]


def run(name: str, seconds: int, corpus: Path, artifacts: Path, *, rss_limit_mb: int = 1024,
        input_timeout: int = 60, nice: int = 0, seed: int = 0) -> RunResult:
    """Fuzz one harness for `seconds`; its stdout and stderr are read back, not shown."""
    harness = HARNESSES[name]
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(artifacts))
    argv = command(harness, seconds, corpus, artifacts, rss_limit_mb=rss_limit_mb, input_timeout=input_timeout,
                   seed=seed)
    if nice:
        argv = ["nice", "-n", str(nice), *argv]
    started = time.monotonic()
    # A hard stop well past the time budget: a harness stuck outside libFuzzer's clock.
    # Unbuffered: atheris prints the Python traceback on stdout and then exits without flushing.
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run(argv, cwd=PROJECT, env=environment, capture_output=True, text=True, errors="replace",
                          timeout=seconds * 2 + 120, check=False)
    output = done.stdout + done.stderr
    result = RunResult(name, round(time.monotonic() - started, 1), done.returncode)
    progress = _PROGRESS.findall(output)
    if progress:
        executions, cov, ft = progress[-1]
        result.executions, result.cov, result.ft = int(executions), int(cov), int(ft)
    executed = _EXECUTED.search(output)
    if executed:
        result.executions = max(result.executions, int(executed[1]))
    result.crashes = sorted(str(artifacts / f) for f in set(os.listdir(artifacts)) - before
                            if f.startswith(CRASH_PREFIXES))
    start = output.find("=== Uncaught Python exception")
    result.output_tail = output[start:start + 4000] if start >= 0 else output[-4000:]
    return result


def _load(stats_file: Path) -> dict[str, dict]:
    return json.loads(stats_file.read_text()) if stats_file.exists() else {}


def campaign(names: list[str], seconds: int, rounds: int, root: Path, nice: int) -> int:
    """Rounds of `seconds` per harness over <root>/corpus/<name>; totals go to <root>/stats.json."""
    stats_file = root / "stats.json"
    totals = _load(stats_file)
    failed = 0
    for round_number in range(1, rounds + 1):
        for name in names:
            result = run(name, seconds, root / "corpus" / name, root / "crashes" / name,
                         rss_limit_mb=2048, nice=nice)
            total = totals.setdefault(name, {"executions": 0, "seconds": 0.0, "runs": 0, "crashes": []})
            total["executions"] += result.executions
            total["seconds"] = round(total["seconds"] + result.seconds, 1)
            total["runs"] += 1
            total.update(cov=result.cov, ft=result.ft, last=asdict(result) | {"output_tail": ""})
            total["crashes"] += result.crashes
            stats_file.write_text(json.dumps(totals, indent=1, sort_keys=True))
            print(f"round {round_number} {name}: {result.executions} executions in {result.seconds:g} s, "
                  f"cov {result.cov} ft {result.ft}, exit {result.returncode}, "
                  f"{len(result.crashes)} new crash file(s)", flush=True)
            if result.crashed:
                failed += 1
                print(result.describe_crashes(), flush=True)
    print("totals:")
    for name in names:
        total = totals[name]
        print(f"  {name}: {total['executions']} executions in {total['seconds']:g} s over {total['runs']} run(s), "
              f"cov {total['cov']} ft {total['ft']}, crash files {len(total['crashes'])}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description="Run the atheris harnesses of tests/fuzz/.")
    parser.add_argument("names", nargs="*", metavar="name",
                        help=f"harnesses to run (default all): {', '.join(HARNESSES)}")
    parser.add_argument("--seconds", type=int, default=600, help="time per harness per round (default 600)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over the harnesses (default 1)")
    parser.add_argument("--root", type=Path, default=PROJECT / "var" / "fuzz",
                        help="persistent corpus, crash files and stats.json (default var/fuzz, outside git)")
    parser.add_argument("--nice", type=int, default=19, help="nice level of the fuzzing processes (default 19)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in HARNESSES]
    if unknown:
        parser.error(f"unknown harness {', '.join(unknown)}; choose from {', '.join(HARNESSES)}")
    if args.seconds < 1 or args.rounds < 1:
        parser.error("--seconds and --rounds must be at least 1")
    return campaign(args.names or list(HARNESSES), args.seconds, args.rounds, args.root, args.nice)


if __name__ == "__main__":
    sys.exit(main())
