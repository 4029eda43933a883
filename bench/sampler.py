"""Runner for the center sampler benchmark; same as `partial-fc bench sampler` (the logic is partial_fc.benchmarks.sampler)."""
import sys

from partial_fc.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "sampler", *sys.argv[1:]]))
