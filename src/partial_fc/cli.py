"""The `partial-fc` command. Parses arguments and hands them to the module that does the work.

    partial-fc train [--test-io]       (what config.sh runs on each rank; settings from PFC_*)
    partial-fc synth --output DIR      (a small learnable synthetic face dataset with .bin pair sets)
    partial-fc demo [--steps N]        (the Partial FC head alone on synthetic embeddings)
    partial-fc bench fc [--n-local 1e5,1e6] [--batch 128] [--dim 512] [--rates 1.0,0.1] [--repeat K] [--json]

A bad argument or PFC_* setting is one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import math
import sys

PROG = "partial-fc"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the whole usage block before the message)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    """An integer >= 1; accepts 1e6 and 1_000_000 as well as 1000000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(value)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"sample rate {text!r} is not in (0, 1]")
    return value


def _list_of(item):
    def parse(text: str) -> list:
        parts = [p.strip() for p in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list")
        return [item(p) for p in parts]
    parse.__name__ = f"list of {item.__name__}"  # argparse names the type in its messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    from .benchmarks import fc

    parser = _Parser(prog=PROG, description="Partial FC: sharded, sampled softmax for face recognition.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    bench = commands.add_parser("bench", help="benchmarks", description="Benchmarks.")
    benchmarks = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", parser_class=_Parser)
    benchmarks.required = True

    p = benchmarks.add_parser("fc", help="time the Partial FC operator step at several sample rates",
                              description="Time one step of the Partial FC operator (forward_backward + update) "
                                          "in one process at several sample rates, with the sampler's share "
                                          "and the matmul GFLOP/s against numpy.")
    p.add_argument("--n-local", type=_list_of(_positive_int), default=list(fc.DEFAULT_N_LOCAL),
                   metavar="N[,N...]", help="classes on this rank (default: 1e5,1e6)")
    p.add_argument("--batch", type=_positive_int, default=fc.DEFAULT_BATCH, help="global batch B (default: 128)")
    p.add_argument("--dim", type=_positive_int, default=fc.DEFAULT_DIM, help="embedding size D (default: 512)")
    p.add_argument("--rates", type=_list_of(_rate), default=list(fc.DEFAULT_RATES), metavar="R[,R...]",
                   help="sample rates in (0, 1]; ratios are taken against the largest (default: 1.0,0.1)")
    p.add_argument("--repeat", type=_positive_int, default=fc.DEFAULT_REPEAT,
                   help="timed steps per point, after one warm-up; the median is reported (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of labels, features, centers and sampler")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.set_defaults(handler=_bench_fc)

    t = commands.add_parser("train", help="train a backbone with the Partial FC head (settings from PFC_*)",
                            description="Train per the PFC_* settings (see config.sh and the README). Run one "
                                        "process per worker: horovodrun -np 2 -H localhost:2 bash config.sh, or "
                                        "bash run.sh. Alone it trains with one worker.")
    t.add_argument("--test-io", action="store_true",
                   help="only read and decode batches from PFC_DATA_DIR and report images/s (no training)")
    t.add_argument("--batches", type=_positive_int, default=50, help="batches read by --test-io (default: 50)")
    t.set_defaults(handler=_train)

    s = commands.add_parser("synth", help="write a small learnable synthetic face dataset",
                            description="Write train.rec/train.idx/property (insightface layout) of synthetic "
                                        "face-like identities plus verification .bin pair sets of held-out "
                                        "identities: the built-in example for the trainer.")
    s.add_argument("--output", required=True, help="folder to write (created if missing)")
    s.add_argument("--identities", type=_positive_int, default=None, help="training identities")
    s.add_argument("--images-per-identity", type=_positive_int, default=None, help="images per training identity")
    s.add_argument("--pairs", type=_positive_int, default=None, help="pairs per verification .bin")
    s.add_argument("--nuisance", type=float, default=None,
                   help="strength of the per-image nuisances (pose, light, background, blur, noise); "
                        "synth_hard.bin uses more")
    s.add_argument("--seed", type=int, default=0, help="seed of every generated identity and image")
    s.set_defaults(handler=_synth)

    d = commands.add_parser("demo", help="train the Partial FC head alone on synthetic embeddings",
                            description="The Partial FC head on synthetic identity embeddings, settings from "
                                        "PFC_* (see config.sh); prints the global loss per step on rank 0.")
    d.add_argument("--steps", type=_positive_int, default=None, help="steps to run (default: PFC_MAX_STEPS or 50)")
    d.set_defaults(handler=_demo)
    return parser


def _demo(args) -> int:
    from . import config, demo

    losses = demo.run(config.load(), steps=args.steps or 0)
    return 0 if losses else 1


def _train(args) -> int:
    from . import config

    cfg = config.load()
    if args.test_io:
        from . import data
        if not cfg.data_dir:
            raise config.ConfigError("--test-io reads PFC_DATA_DIR, which is not set")
        stats = data.test_io(data.open_rec(cfg.data_dir), cfg.batch_size, cfg.data_threads, args.batches)
        print(f"reader: {stats['images_per_s']:.1f} images/s ({args.batches} batches of {cfg.batch_size}, "
              f"{cfg.data_threads} decode thread(s)) from {cfg.data_dir}")
        return 0
    from . import train

    train.run(cfg)
    return 0


def _synth(args) -> int:
    from . import synth

    options = {k: v for k, v in (("identities", args.identities), ("images_per_identity", args.images_per_identity),
                                 ("val_pairs", args.pairs), ("nuisance", args.nuisance)) if v is not None}
    synth.write_dataset(args.output, seed=args.seed, **options)
    return 0


def _bench_fc(args) -> int:
    from .benchmarks import fc

    fc.run(n_local=args.n_local, batch=args.batch, dim=args.dim, rates=args.rates, repeat=args.repeat,
           seed=args.seed, as_json=args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except _user_errors() as e:
        # Bad input (a dataset, a checkpoint, a .bin) or a run that cannot go on: one line, no traceback.
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1


def _user_errors() -> tuple:
    from .checkpoint import CheckpointError
    from .data import DataError
    from .train import TrainingError
    from .verification import BinError
    return (CheckpointError, DataError, TrainingError, BinError)


if __name__ == "__main__":
    sys.exit(main())
