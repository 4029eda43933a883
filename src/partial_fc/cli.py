"""The `partial-fc` command. Parses arguments and hands them to the module that does the work.

    partial-fc train [--test-io]       (what config.sh runs on each rank; settings from PFC_*)
    partial-fc synth --output DIR      (a small learnable synthetic face dataset with .bin pair sets)
    partial-fc demo [--steps N]        (the Partial FC head alone on synthetic embeddings)
    partial-fc bench fc [--n-local 1e5,1e6] [--batch 128] [--dim 512] [--rates 1.0,0.3,0.1] [--repeat K]
                        [--bank-dtype float32] [--json]
    partial-fc bench sampler [--n-local 1e5,1e6,1e7] [--json]   (the sampler's ms per step and share of the step)
    horovodrun -np 2 -H localhost:2 --gloo partial-fc bench comm [--json]   (us per collective vs emulation)
    partial-fc bench memory [--n-local 1e5,1e6] [--rates 0.1,1.0] [--dtypes float32,float16] [--json]
    partial-fc bench train [--classes 1e5,1e6] [--rates 1.0,0.1] [--workers 2] [--steps 5] [--json]
    partial-fc bench train --test-io [--data-dir DIR] [--batch 64] [--threads 1,2] [--batches 50] [--repeat 5]
    partial-fc verify MODEL BIN [BIN ...] [--json]      (10-fold accuracy, XNorm, TAR@FAR=1e-3 on .bin sets)
    partial-fc ijb MODEL IJB_DIR [--target IJBC] [--json]   (IJB-B/C TAR at FAR 1e-6..1e-1 and a ROC plot)
    partial-fc plot RUN_DIR [--out PNG]                 (loss, lr and accuracy curves from metrics.jsonl)
    partial-fc unpack --include DIR[,DIR] --output OUT [--md5 SUMS]   (rec/idx -> a folder per identity)
    partial-fc pack --input FOLDER|--lst FILE --output DIR [--shuffle] [--resize WxH]
    partial-fc make-bin --pairs FILE --root DIR --output X.bin [--format auto|lfw|list]
    partial-fc export CHECKPOINT --output model.onnx [--batch-check N] [--opset 13]   (checked vs MXNet)
    partial-fc memory-plan [--classes 1e8] [--workers 8,64] [--dtypes float32,float16] [--json]   (per-rank bytes)

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
    from .bench import fc

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
                   metavar="N[,N...]",
                   help="classes on this rank (default: 1e5,1e6; 1e7 runs when its bank fits in free memory)")
    p.add_argument("--batch", type=_positive_int, default=fc.DEFAULT_BATCH, help="global batch B (default: 128)")
    p.add_argument("--dim", type=_positive_int, default=fc.DEFAULT_DIM, help="embedding size D (default: 512)")
    p.add_argument("--rates", type=_list_of(_rate), default=list(fc.DEFAULT_RATES), metavar="R[,R...]",
                   help="sample rates in (0, 1]; ratios are taken against the largest (default: 1.0,0.3,0.1)")
    p.add_argument("--repeat", type=_positive_int, default=fc.DEFAULT_REPEAT,
                   help="timed steps per point, after one warm-up; the median is reported (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of labels, features, centers and sampler")
    p.add_argument("--bank-dtype", choices=fc.BANK_DTYPES, default="float32",
                   help="storage of centers and momentum (default: float32)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.set_defaults(handler=_bench_fc)
    _add_benchmarks(benchmarks)
    _add_bench_train(benchmarks)

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
    _add_evaluation_commands(commands)
    _add_data_commands(commands)
    _add_export_command(commands)
    _add_memory_plan(commands)
    return parser


def _add_memory_plan(commands) -> None:
    from .head.precision import DTYPES

    m = commands.add_parser("memory-plan", help="per-rank memory of the head for a class count and world sizes",
                            description="Per-rank bytes of centers, momentum and the FC working set (the "
                                        "formula of memory_plan.memory_plan; bench memory checks its bank part "
                                        "against real banks), as a markdown table or --json.")
    m.add_argument("--classes", type=_positive_int, default=100_000_000, help="total classes (default: 1e8)")
    m.add_argument("--workers", type=_list_of(_positive_int), default=[8, 64], metavar="W[,W...]",
                   help="world sizes (default: 8,64)")
    m.add_argument("--dtypes", type=_list_of(str), default=["float32", "float16"], metavar="DTYPE[,DTYPE...]",
                   help=f"bank storage dtypes, of {', '.join(DTYPES)} (default: float32,float16)")
    m.add_argument("--dim", type=_positive_int, default=512, help="embedding size D (default: 512)")
    m.add_argument("--rate", type=_rate, default=0.1, help="sample rate r (default: 0.1)")
    m.add_argument("--batch", type=_positive_int, default=64, help="per-worker batch (default: 64)")
    m.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    m.set_defaults(handler=_memory_plan)


def _memory_plan(args) -> int:
    import json

    from .head.memory_plan import format_memory_plan, memory_plan
    from .head.precision import DTYPES

    bad = [d for d in args.dtypes if d not in DTYPES]
    if bad:
        raise _Parser(prog=f"{PROG} memory-plan").error(f"unknown dtype {bad[0]!r} (known: {', '.join(DTYPES)})")
    plans = [memory_plan(args.classes, w, args.dim, d, args.rate, args.batch) for w in args.workers for d in args.dtypes]
    print(json.dumps(plans, indent=2) if args.json else format_memory_plan(plans), end="" if not args.json else "\n")
    return 0


def _add_export_command(commands) -> None:
    from .evaluation import export

    e = commands.add_parser("export", help="checkpoint -> ONNX, checked against MXNet with onnxruntime",
                            description="Export a backbone to ONNX (input data [N,3,112,112] raw RGB 0..255, "
                                        "output fc1 [N,D]), run it with onnxruntime and MXNet on the same random "
                                        "images and write the file only if they agree within 1e-4.")
    e.add_argument("checkpoint", help="a trainer output folder (newest checkpoint), a model-NNNN.json manifest, "
                                      "or a plain MXNet model as PREFIX,EPOCH, PREFIX-NNNN.params or "
                                      "PREFIX-symbol.json")
    e.add_argument("--output", required=True, help="the .onnx file to write")
    e.add_argument("--batch-check", type=_positive_int, default=4, metavar="N",
                   help="random images compared between onnxruntime and MXNet (default: 4)")
    e.add_argument("--opset", type=int, default=export.DEFAULT_OPSET,
                   help=f"ONNX opset to declare, 12 or newer (default: {export.DEFAULT_OPSET})")
    e.set_defaults(handler=_export)


def _export(args) -> int:
    from .evaluation import export

    result = export.export(args.checkpoint, args.output, batch_check=args.batch_check, opset=args.opset)
    print(f"exported {result.description} to {result.path} (embedding size {result.embedding_size}); "
          f"onnxruntime vs MXNet on {result.batch} images: max abs diff {result.max_abs_diff:.3g} "
          f"(limit {export.TOLERANCE:g})")
    return 0


def _add_data_commands(commands) -> None:
    from .data import make_bin, pack, unpack

    u = commands.add_parser("unpack", help="train.rec/.idx -> one folder of raw image bytes per identity",
                            description="Unpack RecordIO datasets (insightface or im2rec layout) into one folder "
                                        "per identity holding the images as stored; --md5 checks the files "
                                        "first. The same as unpack_glint360k.py.")
    unpack.add_arguments(u)
    u.set_defaults(handler=unpack.run)

    p = commands.add_parser("pack", help="image folders (one per identity) or a .lst -> train.rec/.idx/property",
                            description="Pack one folder per identity (class ids in folder order, by number when "
                                        "every name is a number) or an im2rec .lst into train.rec, train.idx and "
                                        "property in the insightface layout; bytes pass through unless --resize.")
    pack.add_arguments(p)
    p.set_defaults(handler=pack.run)

    b = commands.add_parser("make-bin", help="pairs list + images -> verification .bin",
                            description="Write a verification .bin (pickle of image bytes and issame) from LFW "
                                        "pairs.txt or 'path1 path2 same' lines; --check loads a .bin safely.")
    make_bin.add_arguments(b)
    b.set_defaults(handler=make_bin.run)


def _add_evaluation_commands(commands) -> None:
    v = commands.add_parser("verify", help="accuracy of a model on verification .bin sets",
                            description="10-fold verification accuracy (with flip), its std, XNorm and TAR at "
                                        "FAR=1e-3 of a model on .bin pair sets (lfw, cfp_fp, agedb_30 style).")
    v.add_argument("model", help="a trainer output folder (newest checkpoint), a model-NNNN.json manifest, "
                                 "PREFIX,EPOCH, PREFIX-NNNN.params or PREFIX-symbol.json of a plain MXNet model")
    v.add_argument("bins", nargs="+", metavar="BIN", help=".bin pair sets, or folders holding them")
    v.add_argument("--batch-size", type=_positive_int, default=32,
                   help="images per forward pass (default: 32; memory grows with it)")
    v.add_argument("--gpu", type=int, default=None, metavar="ID", help="run on this GPU (default: the CPU)")
    v.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    v.set_defaults(handler=_verify)

    j = commands.add_parser("ijb", help="IJB-B / IJB-C template verification: TAR at FAR and a ROC plot",
                            description="1:1 template verification on the IJB-B or IJB-C layout (meta/ and "
                                        "loose_crop/): 5-point alignment, flip features, media-then-template "
                                        "pooling, TAR at FAR 1e-6 .. 1e-1 and a ROC plot.")
    j.add_argument("model", help="as for verify: output folder, manifest, PREFIX,EPOCH or PREFIX-NNNN.params")
    j.add_argument("root", help="the IJB folder holding meta/ and loose_crop/")
    j.add_argument("--target", default="IJBC", type=str.upper, choices=("IJBB", "IJBC"),
                   help="which release: files named ijbb_* or ijbc_* (default: IJBC)")
    j.add_argument("--roc", default=None, metavar="PNG", help="where to draw the ROC (default: <target>_roc.png)")
    j.add_argument("--no-detector-score", dest="detector_score", action="store_false",
                   help="do not weight each image's feature by its detection score (weighted by default)")
    j.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass (default: 32)")
    j.add_argument("--gpu", type=int, default=None, metavar="ID", help="run on this GPU (default: the CPU)")
    j.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    j.set_defaults(handler=_ijb)

    p = commands.add_parser("plot", help="draw a run's loss and accuracy curves to PNG",
                            description="Draw the training loss, learning rate and verification accuracy per "
                                        ".bin against the step, from the metrics.jsonl the trainer writes.")
    p.add_argument("run", help="the trainer's output folder (or its metrics.jsonl)")
    p.add_argument("--out", default=None, metavar="PNG", help="the image to write (default: RUN/curves.png)")
    p.set_defaults(handler=_plot)


def _verify(args) -> int:
    from .evaluation import verify

    return verify.main(args)


def _ijb(args) -> int:
    from .evaluation import ijb

    return ijb.main(args)


def _plot(args) -> int:
    from .evaluation import plot

    return plot.main(args)


def _demo(args) -> int:
    from . import config
    from .training import demo

    losses = demo.run(config.load(), steps=args.steps or 0)
    return 0 if losses else 1


def _train(args) -> int:
    from . import config

    cfg = config.load()
    if args.test_io:
        from .data import loader as data
        if not cfg.data_dir:
            raise config.ConfigError("--test-io reads PFC_DATA_DIR, which is not set")
        stats = data.test_io(data.open_rec(cfg.data_dir), cfg.batch_size, cfg.data_threads, args.batches)
        print(f"reader: {stats['images_per_s']:.1f} images/s ({args.batches} batches of {cfg.batch_size}, "
              f"{cfg.data_threads} decode thread(s)) from {cfg.data_dir}")
        return 0
    from .training import trainer as train

    train.run(cfg)
    return 0


def _synth(args) -> int:
    from .data import synth

    options = {k: v for k, v in (("identities", args.identities), ("images_per_identity", args.images_per_identity),
                                 ("val_pairs", args.pairs), ("nuisance", args.nuisance)) if v is not None}
    synth.write_dataset(args.output, seed=args.seed, **options)
    return 0


def _bench_fc(args) -> int:
    from .bench import fc

    fc.run(n_local=args.n_local, batch=args.batch, dim=args.dim, rates=args.rates, repeat=args.repeat,
           bank_dtype=args.bank_dtype, seed=args.seed, as_json=args.json)
    return 0


def _add_benchmarks(benchmarks) -> None:
    from .bench import comm, fc, memory, sampler

    p = benchmarks.add_parser("sampler", help="time the center sampler against N_local and its share of the step",
                              description="Milliseconds per step of the center sampler at N_local 1e5 .. 1e7 "
                                          "and its share of the FC step at the same rate (the step is measured "
                                          "where its bank fits in free memory, else n/a).")
    p.add_argument("--n-local", type=_list_of(_positive_int), default=list(sampler.DEFAULT_N_LOCAL),
                   metavar="N[,N...]", help="classes on this rank (default: 1e5,1e6,1e7)")
    p.add_argument("--rate", type=_rate, default=sampler.DEFAULT_RATE, help="sample rate (default: 0.1)")
    p.add_argument("--batch", type=_positive_int, default=fc.DEFAULT_BATCH, help="global batch B (default: 128)")
    p.add_argument("--dim", type=_positive_int, default=fc.DEFAULT_DIM, help="embedding size D (default: 512)")
    p.add_argument("--repeat", type=_positive_int, default=sampler.DEFAULT_REPEAT,
                   help="timed sampler calls per point, after one warm-up (default: 20)")
    p.add_argument("--step-repeat", type=_positive_int, default=fc.DEFAULT_REPEAT,
                   help="timed FC steps per point (default: 3)")
    p.add_argument("--no-step", dest="step", action="store_false", help="time the sampler only")
    p.add_argument("--bank-dtype", choices=fc.BANK_DTYPES, default="float32",
                   help="storage of centers and momentum for the FC step (default: float32)")
    p.add_argument("--seed", type=int, default=0, help="seed of labels, features, centers and sampler")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.set_defaults(handler=_bench_sampler)

    c = benchmarks.add_parser("comm", help="time the operator's collectives (run under horovodrun -np 2)",
                              description="Microseconds per collective the operator uses (allgather of features "
                                          "and labels, Max, packed Sum, reduce-scatter) against the zero-padded "
                                          "allreduce that emulates an allgather, and the FC step's communication "
                                          "share. Run one process per rank: horovodrun -np 2 -H localhost:2 "
                                          "--gloo partial-fc bench comm. Rank 0 prints.")
    c.add_argument("--batch", type=_list_of(_positive_int), default=list(comm.DEFAULT_BATCHES), metavar="B[,B...]",
                   help="global batch sizes B_global (default: 128,1024,8192)")
    c.add_argument("--dim", type=_positive_int, default=fc.DEFAULT_DIM, help="embedding size D (default: 512)")
    c.add_argument("--repeat", type=_positive_int, default=comm.DEFAULT_REPEAT,
                   help="timed calls per collective, after warm-up; medians are reported (default: 50)")
    c.add_argument("--fc-n-local", type=_positive_int, default=comm.DEFAULT_FC_N_LOCAL,
                   help="classes per rank of the FC step whose communication share is measured (default: 1e6)")
    c.add_argument("--fc-rate", type=_rate, default=comm.DEFAULT_FC_RATE, help="its sample rate (default: 0.1)")
    c.add_argument("--fc-repeat", type=_positive_int, default=fc.DEFAULT_REPEAT,
                   help="its timed steps (default: 3)")
    c.add_argument("--no-step", dest="step", action="store_false", help="time the collectives only")
    c.add_argument("--bank-dtype", choices=fc.BANK_DTYPES, default="float32",
                   help="storage of centers and momentum for the FC step (default: float32)")
    c.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    c.set_defaults(handler=_bench_comm)

    m = benchmarks.add_parser("memory", help="peak resident memory of the bank and FC steps vs its analytic size",
                              description="For each (N_local, r, bank dtype) a child process creates the bank, "
                                          "touches the momentum, runs a few FC steps and reports its peak "
                                          "resident memory, against the analytic size of centers + momentum "
                                          "and the resident memory of a process that only imported mxnet.")
    m.add_argument("--n-local", type=_list_of(_positive_int), default=list(memory.DEFAULT_N_LOCAL),
                   metavar="N[,N...]", help="classes on this rank (default: 1e5,1e6)")
    m.add_argument("--rates", type=_list_of(_rate), default=list(memory.DEFAULT_RATES), metavar="R[,R...]",
                   help="sample rates (default: 0.1,1.0)")
    m.add_argument("--dtypes", type=_list_of(memory.bank_dtype), default=None, metavar="DTYPE[,DTYPE...]",
                   help="bank storage dtypes (default: float32,float16)")
    m.add_argument("--batch", type=_positive_int, default=fc.DEFAULT_BATCH, help="global batch B (default: 128)")
    m.add_argument("--dim", type=_positive_int, default=fc.DEFAULT_DIM, help="embedding size D (default: 512)")
    m.add_argument("--steps", type=_positive_int, default=memory.DEFAULT_STEPS,
                   help="FC steps each child runs (default: 3)")
    m.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    m.set_defaults(handler=_bench_memory)


def _bench_sampler(args) -> int:
    from .bench import sampler

    sampler.run(n_local=args.n_local, rate=args.rate, batch=args.batch, dim=args.dim, repeat=args.repeat,
                step_repeat=args.step_repeat, step=args.step, bank_dtype=args.bank_dtype, seed=args.seed,
                as_json=args.json)
    return 0


def _bench_comm(args) -> int:
    from .bench import comm

    comm.run(batches=args.batch, dim=args.dim, repeat=args.repeat, fc_n_local=args.fc_n_local,
             fc_rate=args.fc_rate, fc_repeat=args.fc_repeat, step=args.step, bank_dtype=args.bank_dtype,
             as_json=args.json)
    return 0


def _bench_memory(args) -> int:
    from .bench import memory

    memory.run(n_local=args.n_local, rates=args.rates, dtypes=args.dtypes, batch=args.batch, dim=args.dim,
               steps=args.steps, as_json=args.json)
    return 0


def _add_bench_train(benchmarks) -> None:
    from .bench import fc, train

    t = benchmarks.add_parser("train", help="samples/s of the trainer end to end and the FC's share; --test-io: "
                                            "our reader vs mx.io.ImageRecordIter",
                              description="Launch the trainer (horovodrun -np W --gloo, or one process at W = 1) "
                                          "on synthetic images for each class count and sample rate and report "
                                          "samples/s, the FC head's share of the step and the ratio to the "
                                          "largest rate. Run it as a plain command, not under a launcher. With "
                                          "--test-io: images/s of our reader against mx.io.ImageRecordIter on "
                                          "the same images, with and without flips.")
    t.add_argument("--classes", type=_list_of(_positive_int), default=list(train.DEFAULT_CLASSES),
                   metavar="N[,N...]", help="total class counts (default: 1e5,1e6)")
    t.add_argument("--rates", type=_list_of(_rate), default=list(train.DEFAULT_RATES), metavar="R[,R...]",
                   help="sample rates; ratios are taken against the largest (default: 1.0,0.1)")
    t.add_argument("--workers", type=_positive_int, default=train.DEFAULT_WORKERS,
                   help="worker processes (default: 2; 1 runs without a launcher)")
    t.add_argument("--batch", type=_positive_int, default=None,
                   help=f"images per worker (default: {train.DEFAULT_BATCH}; "
                        f"--test-io: images per batch, {train.DEFAULT_IO_BATCH})")
    t.add_argument("--dim", type=_positive_int, default=train.DEFAULT_DIM, help="embedding size D (default: 512)")
    t.add_argument("--network", default=train.DEFAULT_NETWORK, help="backbone (default: mbf)")
    t.add_argument("--warmup", type=int, default=train.DEFAULT_WARMUP, help="steps not timed (default: 2)")
    t.add_argument("--steps", type=_positive_int, default=train.DEFAULT_STEPS,
                   help="timed steps per point; the median is reported (default: 5)")
    t.add_argument("--omp-threads", type=_positive_int, default=None,
                   help="OMP_NUM_THREADS of each worker (default: cores // workers)")
    t.add_argument("--bank-dtype", choices=fc.BANK_DTYPES, default="float32",
                   help="storage of centers and momentum (default: float32)")
    t.add_argument("--seed", type=int, default=0, help="seed of the runs (and of --test-io's synthetic images)")
    t.add_argument("--test-io", action="store_true", help="compare the readers instead of training")
    t.add_argument("--data-dir", default=None,
                   help="--test-io: dataset folder or .rec (default: a small synthetic one in a temporary folder)")
    t.add_argument("--threads", type=_list_of(_positive_int), default=list(train.DEFAULT_IO_THREADS),
                   metavar="T[,T...]", help="--test-io: decode thread counts of both readers (default: 1,2)")
    t.add_argument("--batches", type=_positive_int, default=train.DEFAULT_IO_BATCHES,
                   help="--test-io: batches after the first (default: 50)")
    t.add_argument("--repeat", type=_positive_int, default=train.DEFAULT_IO_REPEAT,
                   help="--test-io: runs of each reader; the median is reported (default: 5)")
    t.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    t.set_defaults(handler=_bench_train)


def _bench_train(args) -> int:
    from .bench import train

    if args.test_io:
        train.run_io(args.data_dir, batch=args.batch or train.DEFAULT_IO_BATCH, threads=args.threads,
                     batches=args.batches, repeat=args.repeat, seed=args.seed, as_json=args.json)
    else:
        train.run(args.classes, args.rates, workers=args.workers, batch=args.batch or train.DEFAULT_BATCH,
                  dim=args.dim, network=args.network, warmup=args.warmup, steps=args.steps,
                  omp_threads=args.omp_threads, bank_dtype=args.bank_dtype, seed=args.seed, as_json=args.json)
    return 0


# Benchmarks that run the operator in ONE process, timed against numpy on the same shapes.
_ONE_PROCESS_BENCHMARKS = (["bench", "fc"], ["bench", "sampler"])


def _one_process_threads(argv: list[str]) -> None:
    """One-process benchmarks compare MXNet with numpy: both get every core (config.use_every_core), set
    before anything imports MXNet; the tables print the setting used."""
    if argv[:2] in _ONE_PROCESS_BENCHMARKS and "mxnet" not in sys.modules:
        from .config import use_every_core
        use_every_core()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _one_process_threads(argv)
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
    from .data.records import DataError
    from .training.trainer import TrainingError
    from .evaluation.ijb import IJBError
    from .evaluation.plot import PlotError
    from .bench.fc import BenchError
    from .data.bins import BinError
    from .evaluation.export import ExportError
    return (CheckpointError, DataError, TrainingError, BinError, BenchError, IJBError, PlotError, ExportError)


if __name__ == "__main__":
    sys.exit(main())
