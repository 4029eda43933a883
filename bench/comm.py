"""Runner for the collectives benchmark (run under horovodrun -np 2 -H localhost:2 --gloo); same as `partial-fc bench comm` (the logic is partial_fc.benchmarks.comm)."""
import sys

from partial_fc.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "comm", *sys.argv[1:]]))
