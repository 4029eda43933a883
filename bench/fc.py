"""Runner for the FC operator benchmark; same as `partial-fc bench fc` (the logic is partial_fc.benchmarks.fc)."""
import sys

from partial_fc.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "fc", *sys.argv[1:]]))
