"""`python -m partial_fc.bench.peak_rss DIR COMMAND...`: run COMMAND and record its peak resident memory.

`bench train` launches every worker's trainer under this wrapper: it runs COMMAND as its child, waits, and
writes DIR/rank<R>.json = {"rank": R, "peak_rss_bytes": ..., "returncode": ...}, R being the rank the launcher
gave the worker (0 without a launcher), then exits with COMMAND's status. The peak is ru_maxrss of
RUSAGE_CHILDREN: the largest resident set among the children waited for, the trainer's own (a `bash
config.sh` that execs the trainer counts as that child). The wrapper imports nothing heavy (no MXNet), so it
adds little memory beside the worker it measures.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys

from .. import atomic, config


def run(folder: str, command: list[str]) -> int:
    """Run `command`, write its peak RSS to `folder`/rank<R>.json; return its exit status (128 + N on signal N)."""
    child = subprocess.Popen(command)
    for sig in (signal.SIGTERM, signal.SIGINT):  # a stopped benchmark stops its trainers too
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    rc = child.wait()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports kilobytes
    rank = config.launcher_rank() or 0
    atomic.write_text(os.path.join(folder, f"rank{rank}.json"),
                      json.dumps({"rank": rank, "peak_rss_bytes": peak, "returncode": rc}))
    return rc if rc >= 0 else 128 - rc


def read(folder: str, workers: int) -> list[int]:
    """Each rank's peak RSS in bytes, rank 0 first; OSError / ValueError / KeyError where one is missing."""
    found = []
    for rank in range(workers):
        with open(os.path.join(folder, f"rank{rank}.json")) as f:
            found.append(int(json.load(f)["peak_rss_bytes"]))
    return found


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m partial_fc.bench.peak_rss DIR COMMAND...")
    sys.exit(run(sys.argv[1], sys.argv[2:]))
