"""Test helper: run `partial-fc train` (settings from PFC_*) and SIGKILL this process at the N-th atomic file
write, just before or just after its rename: a crash at an exact moment of a checkpoint save.

    python tests/kill_during_save.py N before|after
"""
import os
import signal
import sys

from partial_fc import atomic, cli

target, when = int(sys.argv[1]), sys.argv[2]
real_replace = atomic.replace
count = 0


def replace(path, write):
    global count
    count += 1
    if count != target:
        return real_replace(path, write)

    def write_then_die(tmp):
        write(tmp)
        if when == "before":
            print(f"killing at write {count} ({path}) before its rename", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    real_replace(path, write_then_die)
    print(f"killing at write {count} ({path}) after its rename", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


atomic.replace = replace
sys.exit(cli.main(["train"]))
