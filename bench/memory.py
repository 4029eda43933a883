"""Runner for the peak memory benchmark; same as `partial-fc bench memory` (the logic is partial_fc.benchmarks.memory)."""
import sys

from partial_fc.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "memory", *sys.argv[1:]]))
