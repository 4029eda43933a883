"""The `partial-fc` command: a table of subcommands, each a module with add_arguments(parser) and run(args).

    partial-fc train [--test-io]       (what config.sh runs on each rank; settings from PFC_*)
    partial-fc check-config            (the PFC_* settings checked before launching: bash config.sh check)
    partial-fc synth --output DIR      (a small learnable synthetic face dataset with .bin pair sets)
    partial-fc demo [--steps N]        (the Partial FC head alone on synthetic embeddings)
    partial-fc bench fc|sampler|memory|train [...] [--json]   (one-process and launched benchmarks)
    horovodrun -np 2 -H localhost:2 --gloo partial-fc bench comm [--json]   (us per collective vs emulation)
    partial-fc verify MODEL BIN [BIN ...] [--json]      (10-fold accuracy, XNorm, TAR@FAR=1e-3 on .bin sets)
    partial-fc ijb MODEL IJB_DIR [--target IJBC] [--json]   (IJB-B/C TAR at FAR 1e-6..1e-1 and a ROC plot)
    partial-fc plot RUN_DIR [--out PNG]                 (loss, lr and accuracy curves from metrics.jsonl)
    partial-fc export CHECKPOINT --output model.onnx    (checked against MXNet with onnxruntime)
    partial-fc unpack --include DIR[,DIR] --output OUT [--md5 SUMS]   (rec/idx -> a folder per identity)
    partial-fc pack --input FOLDER|--lst FILE --output DIR [--shuffle] [--resize WxH]
    partial-fc make-bin --pairs FILE --root DIR --output X.bin [--format auto|lfw|list]
    partial-fc check-data DIR [--md5 SUMS] [--json]    (every record, label, identity and image of a dataset)
    partial-fc study rates [--rates 1.0,0.3,0.1] [-- COMMAND]   (the same training run at several sample rates)
    partial-fc memory-plan [--classes N] [--workers W[,W...]] [--json]   (per-rank bytes of the head)

`partial-fc COMMAND --help` lists a command's options and their defaults.

The table names each command's module by path and cli.py imports it only when that command is chosen, so
building the parser stays light: `partial-fc --help` and the --help of every command that is not an MXNet
program never load MXNet. A command's description is its module's DESCRIPTION, else the table's help.

A bad argument is one line on stderr and exit status 2; a UserError (bad input, a bad PFC_* setting, a run
that cannot go on) is one line and its EXIT_STATUS (errors.py).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field

from .args import INFERENCE, JSON, RESIZE
from .errors import UserError

PROG = "partial-fc"


@dataclass(frozen=True)
class Command:
    module: str                       # imported only when chosen; defines add_arguments(parser), run(args) -> int
    help: str                         # one line in the listing of its group
    parents: tuple = ()               # argparse parent parsers of shared flags (args.py)
    every_core: bool = False          # a one-process benchmark timed against numpy: config.use_every_core()
                                      # before anything imports MXNet, which reads the thread count once


@dataclass(frozen=True)
class Group:
    help: str
    description: str
    dest: str                         # the attribute of the parsed arguments naming the chosen member
    metavar: str
    commands: dict = field(default_factory=dict)


BENCHMARKS = {
    "fc": Command("partial_fc.bench.fc", "time the Partial FC operator step at several sample rates",
                  (JSON,), every_core=True),
    "sampler": Command("partial_fc.bench.sampler", "time the center sampler against N_local and its share of "
                                                   "the step", (JSON,), every_core=True),
    "comm": Command("partial_fc.bench.comm", "time the operator's collectives (run under horovodrun -np 2)",
                    (JSON,)),
    "memory": Command("partial_fc.bench.memory", "peak resident memory of the bank and FC steps vs its analytic "
                                                 "size", (JSON,)),
    "train": Command("partial_fc.bench.train", "samples/s of the trainer end to end and the FC's share; "
                                               "--test-io: our reader vs mx.io.ImageRecordIter", (JSON,)),
    "soak": Command("partial_fc.bench.soak", "the head for 100k steps and the trainer for 30 min under horovodrun: "
                                             "stalls, memory, descriptors, checkpoints kept", (JSON,)),
    "scale": Command("partial_fc.bench.scale", "100 M classes on 64 ranks simulated here: train, checkpoint, resume "
                                               "re-sharded; peak RSS vs the memory plan", (JSON,)),
}

STUDIES = {
    "rates": Command("partial_fc.study.rates", "the same run at several sample rates: loss, accuracy, speed, "
                                               "memory", (JSON,)),
}

COMMANDS = {
    "train": Command("partial_fc.training.trainer",
                     "train a backbone with the Partial FC head (settings from PFC_*)"),
    "check-config": Command("partial_fc.training.check_config",
                            "check a training run's PFC_* settings once, before launching workers"),
    "synth": Command("partial_fc.data.synth", "write a small learnable synthetic face dataset"),
    "demo": Command("partial_fc.training.demo", "train the Partial FC head alone on synthetic embeddings"),
    "bench": Group("benchmarks", "Benchmarks.", "benchmark", "BENCHMARK", BENCHMARKS),
    "study": Group("studies: training runs compared in one table", "Studies.", "study", "STUDY", STUDIES),
    "verify": Command("partial_fc.evaluation.verify", "accuracy of a model on verification .bin sets",
                      (INFERENCE, JSON)),
    "ijb": Command("partial_fc.evaluation.ijb", "IJB-B / IJB-C template verification: TAR at FAR and a ROC plot",
                   (INFERENCE, JSON)),
    "plot": Command("partial_fc.evaluation.plot", "draw a run's loss and accuracy curves to PNG"),
    "export": Command("partial_fc.evaluation.export", "checkpoint -> ONNX, checked against MXNet with onnxruntime"),
    "unpack": Command("partial_fc.data.unpack", "train.rec/.idx -> one folder of raw image bytes per identity"),
    "pack": Command("partial_fc.data.pack", "image folders (one per identity) or a .lst -> "
                                            "train.rec/.idx/property", (RESIZE,)),
    "make-bin": Command("partial_fc.data.make_bin", "pairs list + images -> verification .bin", (RESIZE,)),
    "check-data": Command("partial_fc.data.check", "verify a dataset end to end: records, labels, identities, "
                                                   "images, md5", (JSON,)),
    "memory-plan": Command("partial_fc.head.memory_plan",
                           "per-rank memory of the head for a class count and world sizes", (JSON,)),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints the whole usage block before the message)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _chosen(argv: list[str], table: dict = COMMANDS) -> Command | None:
    """The command `argv` names (argv[0], and argv[1] within a group), or None when it names none: the
    parser then reports the problem. Read before parsing, so nothing is imported for the other commands."""
    entry = table.get(argv[0]) if argv else None
    if isinstance(entry, Group):
        return _chosen(argv[1:], entry.commands)
    return entry


def build_parser(argv: list[str] = ()) -> argparse.ArgumentParser:
    """The parser of `partial-fc`, complete for the command `argv` names (its module imported); every other
    command is listed with its help only."""
    parser = _Parser(prog=PROG, description="Partial FC: sharded, sampled softmax for face recognition.")
    _add_table(parser, COMMANDS, list(argv), dest="command", metavar="COMMAND")
    return parser


def _add_table(parser, table: dict, argv: list[str], dest: str, metavar: str) -> None:
    subparsers = parser.add_subparsers(dest=dest, metavar=metavar, parser_class=_Parser, required=True)
    for name, entry in table.items():
        parents = list(entry.parents) if isinstance(entry, Command) else []
        sub = subparsers.add_parser(name, help=entry.help, description=entry.help, parents=parents)
        if not argv or argv[0] != name:
            continue
        if isinstance(entry, Group):
            sub.description = entry.description
            _add_table(sub, entry.commands, argv[1:], entry.dest, entry.metavar)
        else:
            module = importlib.import_module(entry.module)
            sub.description = getattr(module, "DESCRIPTION", entry.help)
            module.add_arguments(sub)


def _parsed(args: argparse.Namespace) -> Command:
    """The command the parsed arguments chose (argparse requires one at every level)."""
    entry = COMMANDS[args.command]
    while isinstance(entry, Group):
        entry = entry.commands[getattr(args, entry.dest)]
    return entry


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _chosen(argv)
    if command is not None and "mxnet" not in sys.modules:
        # Read by MXNet's native libraries once, as they load: before the command's module imports MXNet.
        from .config import prepare_libraries, use_every_core
        prepare_libraries()
        if command.every_core:
            use_every_core()
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(_parsed(args).module)
    try:
        return module.run(args)
    except UserError as e:
        # Bad input (a dataset, a checkpoint, a .bin, a setting) or a run that cannot go on: one line, no traceback.
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.EXIT_STATUS


if __name__ == "__main__":
    sys.exit(main())
