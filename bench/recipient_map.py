"""Memory and look-up time of the file recipient source with a million entries.

Run: .venv/bin/python bench/recipient_map.py [ENTRIES]. Prints the load time, the bytes the map
holds, the process's resident growth, and the mean time of a look-up (found and not found).
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

from mailgate.recipients.mapfile import parse_map


def resident_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(entries: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "recipients"
        with path.open("w") as handle:
            for index in range(entries):
                handle.write(f"user{index}@example.test\n")
        before = resident_kib()
        started = time.perf_counter()
        recipients = parse_map(path)
        loaded = time.perf_counter() - started
        after = resident_kib()
    probes = 200_000
    started = time.perf_counter()
    for index in range(probes):
        recipients.knows(f"user{index * 5}@example.test")
    found = (time.perf_counter() - started) / probes
    started = time.perf_counter()
    for index in range(probes):
        recipients.knows(f"nobody{index}@example.test")
    missing = (time.perf_counter() - started) / probes
    print(f"entries={len(recipients)} load={loaded:.2f}s map_bytes={recipients.nbytes} "
          f"rss_growth={(after - before) / 1024:.1f}MiB lookup_found={found * 1e6:.2f}us lookup_missing={missing * 1e6:.2f}us")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
