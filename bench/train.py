"""Runner for the training benchmark; same as `partial-fc bench train` (the logic is partial_fc.benchmarks.train).

    python bench/train.py                 samples/s of the trainer, r = 0.1 vs 1.0 at N = 1e5 and 1e6, 2 workers
    python bench/train.py --test-io       our reader vs mx.io.ImageRecordIter
"""
import sys

from partial_fc.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train", *sys.argv[1:]]))
