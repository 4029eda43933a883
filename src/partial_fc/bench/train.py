"""`partial-fc bench train`: end-to-end samples/s of the trainer and the FC head's share of its step; with
--test-io, the decode throughput of our reader against MXNet's ImageRecordIter on the same rec.

Training. For each class count N and sample rate r the benchmark launches the real trainer, `partial-fc
train`, on random synthetic images (no data folder), one process per worker:
    horovodrun -np W -H localhost:W --gloo env PFC_...=... partial-fc train      (W >= 2)
    env PFC_COMM=local PFC_...=... partial-fc train                             (W = 1)
so users run the benchmark itself as a plain command, not under a launcher. The trainer runs with
PFC_PROFILE=1 (the head is timed between waits for MXNet's queue: fc_s per step in metrics.jsonl),
PFC_FREQUENT=1 (one metrics line per step) and PFC_SAVE_CHECKPOINTS=0; the ranks meet at a barrier before
each timed part, so a rank's wait for a slower rank's backbone counts as "rest", not as FC. The first `warmup` steps are
dropped; of the next `steps` steps the medians are reported per (N, r):
    step          seconds per step on rank 0 (the time between two consecutive step reports)
    samples/s     batch * workers / step, the global throughput
    vs r=ref      samples/s over that of the largest rate at the same N (r = 1.0 is model parallelism)
    FC            seconds of the head (forward_backward + update) within the step, its share of the step,
                  and fc_s(ref) / fc_s(r)
    peak RSS      each rank's peak resident memory over the whole run (GiB): every worker runs the trainer
                  under `python -m partial_fc.bench.peak_rss DIR`, which waits for it and writes its
                  ru_maxrss (getrusage RUSAGE_CHILDREN) to DIR (peak_rss.py)
The waits around the head slightly serialise the step (the head can no longer overlap the backbone's queued
work), so samples/s is that of a profiled run; a run without PFC_PROFILE is at least as fast.
A point whose estimated memory (every worker's bank, step temporaries and backbone) exceeds MemAvailable is
skipped with a line saying what it needs. The backbone estimate is mbf's on CPU; other networks need more.

Reader (--test-io). MXNet's ImageRecordIter cannot read an insightface rec: record 0 is a header with an
empty image (its decoder fails on it: OpenCV's `!buf.empty()` assertion), and the identity records after
the images are empty too. With a path_imgidx listing only image keys it still reads them: unshuffled it
reads sequentially from the first listed offset to the end of the file, shuffled it takes each listed
record's extent up to the next listed offset, so the last image runs on through the identity records.
So the benchmark copies the first (batches + 1) * batch images (bytes unchanged, header re-packed with the
scalar class) into an im2rec-layout rec + idx in a temporary folder, and both readers read that copy, each
image exactly once, in a random order, with the same batch size, decode threads and prefetch depth. Both
produce float32 [B, 3, H, W] RGB 0..255 (ours as numpy, ImageRecordIter as an NDArray). The clock runs
from creating the iterator to the last batch (no prefetched batch escapes it), with and without random
horizontal flips (rand_mirror for ImageRecordIter). ImageRecordIter caps its decode threads at
max(cores / 2 - 1, 1) whatever preprocess_threads asks (MXNet's iter_image_recordio_2.cc, "be conservative"):
1 on a 2-core machine. Each row shows the threads each reader used; a ratio between unequal thread counts
is marked.
"""
from __future__ import annotations

import collections
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from ..args import list_of, positive_int, rate
from ..head.sampler import num_sampled
from ..head.sharding import shard_range
from . import common, fc, peak_rss

DEFAULT_CLASSES = (100_000, 1_000_000)
DEFAULT_RATES = (1.0, 0.1)
DEFAULT_WORKERS = 2
# Per worker. The trainer's mbf on CPU peaked at about 0.26 GiB + 0.13 GiB per image of its batch before issue
# 14 (resident, MXNet 1.9.1: 2.3 GiB at batch 16, 4.3 at 32, 8.4 at 64); since its PReLU uses MKLDNN operators
# only (symbols/common.py, prelu), about 0.25 GiB + 0.058 GiB per image (`bench memory`, backbone rows).
DEFAULT_BATCH = 16
DEFAULT_DIM = 512
DEFAULT_NETWORK = "mbf"
DEFAULT_WARMUP, DEFAULT_STEPS = 2, 5
BACKBONE_BYTES, BACKBONE_BYTES_PER_IMAGE = int(0.26 * common.GIB), int(0.07 * common.GIB)  # mbf on CPU, see above

DEFAULT_IO_BATCH, DEFAULT_IO_THREADS, DEFAULT_IO_BATCHES, DEFAULT_IO_REPEAT = 64, (1, 2), 50, 5


def benchmark(classes=DEFAULT_CLASSES, rates=DEFAULT_RATES, workers=DEFAULT_WORKERS, batch=DEFAULT_BATCH,
        dim=DEFAULT_DIM, network=DEFAULT_NETWORK, warmup=DEFAULT_WARMUP, steps=DEFAULT_STEPS, *,
        omp_threads=None, bank_dtype="float32", seed=0, as_json=False, out=None, log=None, workdir=None) -> dict:
    """Run the training benchmark; print a table (or JSON) to `out`, progress to `log`; return the report.

    classes: total class counts N; rates: sample rates; workers: processes (1 runs without a launcher);
    batch: images per worker; omp_threads: OMP_NUM_THREADS of each worker (default: cores // workers);
    bank_dtype: storage of centers and momentum (PFC_BANK_DTYPE);
    workdir: where the runs' temporary folders go (default: the system's temporary folder).
    """
    out, log = out or sys.stdout, log or sys.stderr
    classes = [int(n) for n in classes]
    rates = sorted({float(r) for r in rates}, reverse=True)
    if not classes or min(classes) < 1 or not rates or not all(0.0 < r <= 1.0 for r in rates):
        raise common.BenchError(f"need class counts >= 1 and sample rates in (0, 1], got {classes} and {rates}")
    if min(workers, batch, dim, steps) < 1 or warmup < 0:
        raise common.BenchError("workers, batch, dim and steps must be >= 1 and warmup >= 0")
    if min(classes) < workers:
        raise common.BenchError(f"{min(classes)} classes cannot be split over {workers} workers")
    common.check_bank_dtype(bank_dtype)
    cores = os.cpu_count() or 1
    omp_threads = omp_threads or max(1, cores // workers)
    threads = {"OMP_NUM_THREADS": str(omp_threads), "MXNET_CPU_WORKER_NTHREADS": "1"}
    launcher = _launcher(workers)
    trainer = common.executable("partial-fc")

    t_start = time.perf_counter()
    results, skipped = [], []
    base = tempfile.mkdtemp(prefix="pfc-bench-train-", dir=workdir)
    try:
        for n in classes:
            count = shard_range(n, workers, 0)[1]
            for r in rates:
                need = workers * (fc.step_bytes(count, dim, [r], batch * workers, bank_dtype) + BACKBONE_BYTES
                                  + BACKBONE_BYTES_PER_IMAGE * batch)
                have = common.available_memory()
                if have is not None and need > have:
                    record = common.skip_record(count, [r], need, have, log)
                    skipped.append({**record, "classes": n})
                    continue
                settings = _settings(n, r, batch, dim, network, warmup + steps, seed, workers, bank_dtype,
                                     os.path.join(base, f"N{n}_r{r:g}"))
                results.append(_run_point(launcher, trainer, settings, threads, n, r, workers, batch, warmup,
                                          steps, count, log))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    _compare(results)
    report = {
        "benchmark": "train",
        "machine": common.machine_info(),
        "config": {"classes": classes, "rates": rates, "workers": workers, "batch": batch,
                   "global_batch": batch * workers, "dim": dim, "network": network, "bank_dtype": bank_dtype,
                   "warmup": warmup,
                   "steps": steps, "seed": seed, "launcher": " ".join(launcher) or "none (PFC_COMM=local)",
                   "worker_threads": threads, "data": "synthetic images (PFC_DATA_DIR empty)"},
        "results": results,
        "skipped": skipped,
        "wall_s": time.perf_counter() - t_start,
    }
    common.emit(report, format_table, as_json, out)
    return report


def _launcher(workers: int) -> list[str]:
    return [] if workers == 1 else common.horovodrun_local(workers)


def _settings(n, r, batch, dim, network, total_steps, seed, workers, bank_dtype, output) -> dict:
    """The PFC_* settings of one run; each one the trainer reads is pinned, so the user's own PFC_* values
    (say from config.sh) cannot change what is measured."""
    return {
        "PFC_DATA_DIR": "", "PFC_OUTPUT": output, "PFC_RESUME": "", "PFC_NETWORK": network,
        "PFC_NUM_CLASSES": str(n), "PFC_SAMPLE_RATE": repr(float(r)), "PFC_EMBEDDING_SIZE": str(dim),
        "PFC_BATCH_SIZE": str(batch), "PFC_MAX_STEPS": str(total_steps), "PFC_LR_STEPS": "",
        "PFC_WARMUP_STEPS": "0", "PFC_FREQUENT": "1", "PFC_SAVE_CHECKPOINTS": "0", "PFC_TENSORBOARD": "0",
        "PFC_PROFILE": "1", "PFC_SEED": str(seed), "PFC_FP16": "0", "PFC_MEMORY_BANK": "device",
        "PFC_BANK_DTYPE": bank_dtype, "PFC_DROPOUT": "0", "PFC_COMM": "local" if workers == 1 else "horovod",
    }


def _run_point(launcher, trainer, settings, threads, n, r, workers, batch, warmup, steps, count, log) -> dict:
    output = settings["PFC_OUTPUT"]
    rss_dir = output + ".rss"
    os.makedirs(output)
    os.makedirs(rss_dir)
    env_args = [f"{k}={v}" for k, v in {**threads, **settings}.items()]
    # `env` sets the run's variables inside each launched worker; this process's environment is untouched.
    # Each worker's trainer runs under the peak-RSS wrapper (peak_rss.py), which records its peak RSS.
    cmd = [*launcher, "env", *env_args, sys.executable, "-m", "partial_fc.bench.peak_rss", rss_dir, trainer, "train"]
    where = f"bench train: N={n:,} r={r:g}"
    print(f"{where}: {workers} worker(s), {warmup} warm-up + {steps} timed step(s) ...", file=log, flush=True)
    tail = collections.deque(maxlen=40)
    t0 = time.perf_counter()
    with open(os.path.join(output, "..", f"N{n}_r{r:g}.log"), "w") as transcript:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace")
        for line in proc.stdout:
            transcript.write(line)
            tail.append(line.rstrip())
            text = line.strip()
            if "samples/s" in text:  # the trainer's step lines (horovodrun prefixes "[0]<stdout>:")
                print(f"{where}: {text.split('>:', 1)[-1]}", file=log, flush=True)
        rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise common.BenchError(f"{where}: the trainer exited with status {rc}: {_last_error(tail)}")
    steps_s, fc_s = _timed_steps(os.path.join(output, "metrics.jsonl"), batch * workers, warmup, steps, where)
    step_s, head_s = statistics.median(steps_s), statistics.median(fc_s)
    try:
        rss = peak_rss.read(rss_dir, workers)
    except (OSError, ValueError, KeyError) as e:
        raise common.BenchError(f"{where}: {rss_dir}: a rank's peak RSS is missing ({e})") from None
    return {
        "classes": n, "rate": r, "workers": workers, "n_local": count,
        "sampled": num_sampled(count, r, 1),
        "step_s": step_s, "step_times_s": steps_s,
        "samples_per_s": batch * workers / step_s,
        "fc_s": head_s, "fc_times_s": fc_s, "fc_share": head_s / step_s, "rest_s": step_s - head_s,
        "peak_rss_bytes": rss, "peak_rss_max_bytes": max(rss),
        "run_wall_s": wall,
    }


def _last_error(lines) -> str:
    """The most telling line of a failed run's output: its error line, else its last line."""
    lines = [l for l in lines if l.strip()]
    for l in reversed(lines):
        if "error" in l.lower():
            return l.strip()
    return lines[-1].strip() if lines else "no output"


def _timed_steps(path, global_batch, warmup, steps, where) -> tuple[list[float], list[float]]:
    """(seconds per step, FC seconds per step) of steps warmup+1 .. warmup+steps from metrics.jsonl."""
    try:
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        raise common.BenchError(f"{path}: the trainer's metrics cannot be read ({e})") from None
    timed = [rec for rec in records if warmup < rec.get("step", 0) <= warmup + steps and "samples_per_s" in rec]
    if len(timed) != steps or any("fc_s" not in rec for rec in timed):
        raise common.BenchError(f"{where}: {path} holds {len(timed)} of the {steps} timed steps with fc_s")
    # With PFC_FREQUENT=1 the reporter's window is one step: samples_per_s = global batch / step seconds.
    return [global_batch / rec["samples_per_s"] for rec in timed], [float(rec["fc_s"]) for rec in timed]


def _compare(results: list[dict]) -> None:
    """Add each row's ratios against the largest rate at the same N."""
    for row in results:
        same = [x for x in results if x["classes"] == row["classes"]]
        ref = max(same, key=lambda x: x["rate"])
        row["ref_rate"] = ref["rate"]
        row["vs_ref"] = row["samples_per_s"] / ref["samples_per_s"]
        row["fc_ratio"] = ref["fc_s"] / row["fc_s"]


def format_table(report: dict) -> str:
    c = report["config"]
    lines = [
        f"partial-fc bench train: the trainer end to end, {c['network']} D={c['dim']}, {c['workers']} worker(s) "
        f"x batch {c['batch']} (global {c['global_batch']}), bank {c['bank_dtype']}, synthetic images; "
        f"median of {c['steps']} steps after {c['warmup']} warm-up",
        *common.machine_lines(report["machine"]),
        f"workers: launcher {c['launcher']}; "
        + " ".join(f"{k}={v}" for k, v in c["worker_threads"].items()),
        "",
    ]
    rows = [(f"{r['classes']:,}", f"{r['n_local']:,}", f"{r['rate']:g}", f"{r['sampled']:,}",
             f"{r['step_s'] * 1e3:.0f}", f"{r['samples_per_s']:.1f}", f"{r['vs_ref']:.2f}",
             f"{r['fc_s'] * 1e3:.0f}", f"{r['fc_share']:.0%}", f"{r['fc_ratio']:.2f}", f"{r['rest_s'] * 1e3:.0f}",
             " ".join(f"{b / common.GIB:.2f}" for b in r["peak_rss_bytes"]), "")
            for r in report["results"]]
    if rows:
        ref = report["results"][0]["ref_rate"]
        lines += common.table(("N", "N_local", "r", "S", "step ms", "samples/s", f"vs r={ref:g}", "FC ms", "FC %",
                           "FC ratio", "rest ms", "peak RSS GiB/rank", ""), rows)
    lines += [f"N={s['classes']:,} r={s['rates'][0]:g}: {s['message']}" for s in report["skipped"]]
    lines += [
        "",
        "samples/s = global batch / step; vs r = samples/s over that of the largest rate at the same N; "
        "FC = the head's forward_backward + update between waits (PFC_PROFILE=1), FC ratio = FC(ref) / FC(r); "
        "rest = step - FC (backbone, data, optimizer); S = sampled centers per rank (at least); "
        "peak RSS = each rank's peak resident memory over its whole run, rank 0 first.",
        f"wall time {report['wall_s']:.1f} s",
    ]
    return "\n".join(lines) + "\n"


# ---- the reader against mx.io.ImageRecordIter ------------------------------------------------------------

def benchmark_io(data_dir=None, batch=DEFAULT_IO_BATCH, threads=DEFAULT_IO_THREADS, batches=DEFAULT_IO_BATCHES,
           repeat=DEFAULT_IO_REPEAT, *, seed=0, as_json=False, out=None, log=None, workdir=None) -> dict:
    """Images/s of data.FaceIter and of mx.io.ImageRecordIter on the same images, with and without flips.

    data_dir: a dataset folder (train.rec/.idx) or .rec; None writes a small synthetic one first.
    threads: decode thread counts to compare at. Each reader decodes (batches + 1) * batch images per
    measurement; the readers alternate `repeat` times and the median seconds count. Returns the report."""
    from ..data import loader as data

    out, log = out or sys.stdout, log or sys.stderr
    threads = sorted({int(t) for t in ([threads] if isinstance(threads, int) else threads)})
    if min(batch, batches, repeat) < 1 or not threads or threads[0] < 1:
        raise common.BenchError("batch, threads, batches and repeat must be >= 1")
    images = (batches + 1) * batch
    t_start = time.perf_counter()
    base = tempfile.mkdtemp(prefix="pfc-bench-io-", dir=workdir)
    try:
        source = data_dir
        if source is None:
            from ..data import synth
            source = os.path.join(base, "synth")
            per = synth.DEFAULT_IMAGES_PER_IDENTITY
            print(f"bench train --test-io: writing {images} synthetic images to {source} ...", file=log, flush=True)
            synth.write_dataset(source, identities=max(2, math.ceil(images / per)), images_per_identity=per,
                                val_pairs=2, seed=seed, progress=log)
        with data.open_rec(source) as ds:
            if len(ds) < images:
                raise common.BenchError(f"{ds.rec_path}: {len(ds)} images, fewer than the {images} = (batches + 1) x "
                                 f"batch the comparison reads; lower --batches or --batch")
            copy = copy_images(ds, images, os.path.join(base, "images"))
            layout, source_rec = ds.layout, ds.rec_path
        rows = []
        for flip in (False, True):
            for t in threads:
                where = f"bench train --test-io: flip={flip} threads={t}"
                print(f"{where}: our reader and mx.io.ImageRecordIter, {repeat} time(s) each ...", file=log,
                      flush=True)
                runs = [(time_face_iter(copy, batch, t, batches + 1, flip, seed + k),
                         time_image_record_iter(copy, batch, t, batches + 1, flip, seed + k)) for k in range(repeat)]
                ours, theirs = _median_run([a for a, _ in runs]), _median_run([b for _, b in runs])
                if (ours["shape"], ours["dtype"]) != (theirs["shape"], theirs["dtype"]):
                    raise common.BenchError(f"the readers disagree on the batch: ours {ours['shape']} {ours['dtype']}, "
                                     f"ImageRecordIter {theirs['shape']} {theirs['dtype']}")
                rows.append({"flip": flip, "reader": ours, "image_record_iter": theirs,
                             "equal_threads": ours["threads"] == theirs["threads"],
                             "ratio": ours["images_per_s"] / theirs["images_per_s"]})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report = {
        "benchmark": "train --test-io",
        "machine": common.machine_info(),
        "config": {"data": data_dir or "synthetic (partial-fc synth)", "source_rec_layout": layout,
                   "source_rec": source_rec if data_dir else None, "images": images, "batch": batch,
                   "batches": batches + 1, "threads": threads, "repeat": repeat, "seed": seed,
                   "image_record_iter_max_threads": image_record_iter_threads(max(threads)),
                   "order": "random, each image once"},
        "results": rows,
        "wall_s": time.perf_counter() - t_start,
    }
    common.emit(report, format_io_table, as_json, out)
    return report


def _prefetch(threads: int) -> int:
    return max(2, 2 * threads)  # what data.test_io uses


def image_record_iter_threads(requested: int) -> int:
    """The decode threads ImageRecordIter really runs: it caps preprocess_threads at max(procs / 2 - 1, 1)."""
    procs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(requested, max(procs // 2 - 1, 1))


def copy_images(ds, count: int, folder: str) -> str:
    """Write the first `count` images of `ds` as an im2rec-layout train.rec/.idx (keys 0..count-1, scalar
    class labels, the encoded bytes unchanged) plus a property file; return the .rec path."""
    from ..data.records import RecordWriter, pack_image

    os.makedirs(folder, exist_ok=True)
    rec = os.path.join(folder, "train.rec")
    with RecordWriter(rec, rec[:-4] + ".idx") as w:
        for i in range(count):
            w.write(i, pack_image(float(ds.labels[i]), ds.read(i), id=i))
    with open(os.path.join(folder, "property"), "w") as f:
        f.write(f"{ds.num_classes},{ds.image_size[0]},{ds.image_size[1]}\n")
    return rec


def time_face_iter(rec: str, batch: int, threads: int, batches: int, flip: bool, seed: int) -> dict:
    """Our reader: `batches` batches, the clock running from creating the iterator to the last batch."""
    from ..data import loader as data

    with data.open_rec(rec) as ds:
        t0 = time.perf_counter()
        with data.FaceIter(ds, batch, 0, 1, seed=seed, flip=flip, threads=threads, prefetch=_prefetch(threads),
                           max_bad_fraction=0.0) as it:
            for _ in range(batches):
                images, _labels = next(it)
            seconds = time.perf_counter() - t0
    return _io_result(batches * batch, seconds, images.shape, images.dtype, "numpy.ndarray", threads)


def time_image_record_iter(rec: str, batch: int, threads: int, batches: int, flip: bool, seed: int) -> dict:
    """mx.io.ImageRecordIter on the same rec: the same count, batch, threads and prefetch depth."""
    import mxnet as mx

    from ..data import loader as data

    with data.open_rec(rec) as ds:
        height, width = ds.image_size
    t0 = time.perf_counter()
    it = mx.io.ImageRecordIter(path_imgrec=rec, path_imgidx=rec[:-4] + ".idx", data_shape=(3, height, width),
                               batch_size=batch, preprocess_threads=threads, prefetch_buffer=_prefetch(threads),
                               shuffle=True, seed=seed, rand_mirror=flip, round_batch=False, label_width=1)
    try:
        for _ in range(batches):
            images = it.next().data[0]
            images.wait_to_read()
        seconds = time.perf_counter() - t0
    finally:
        del it
    return _io_result(batches * batch, seconds, images.shape, np.dtype(images.dtype), "mxnet.nd.NDArray",
                      image_record_iter_threads(threads))


def _median_run(runs: list[dict]) -> dict:
    """One reader's result over repeats: the median seconds, with every repeat's seconds alongside."""
    seconds = [r["seconds"] for r in runs]
    return {**runs[0], "seconds": statistics.median(seconds), "seconds_all": seconds,
            "images_per_s": runs[0]["images"] / statistics.median(seconds)}


def _io_result(images, seconds, shape, dtype, kind, threads) -> dict:
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds, "threads": threads,
            "shape": list(shape), "dtype": str(np.dtype(dtype)), "type": kind}


def format_io_table(report: dict) -> str:
    c = report["config"]
    shape = "x".join(str(s) for s in report["results"][0]["reader"]["shape"]) if report["results"] else "?"
    lines = [
        f"partial-fc bench train --test-io: decode throughput on {c['images']} images ({c['batches']} batches "
        f"of {c['batch']}, {shape} float32) from {c['data']} (copied to an im2rec-layout rec that both read); "
        f"prefetch 2 x threads (at least 2) for both; median of {c['repeat']} alternating runs",
        *common.machine_lines(report["machine"]),
        "",
    ]
    rows = [("yes" if r["flip"] else "no", str(r["reader"]["threads"]), f"{r['reader']['images_per_s']:.0f}",
             str(r["image_record_iter"]["threads"]), f"{r['image_record_iter']['images_per_s']:.0f}",
             f"{r['ratio']:.2f}", "" if r["equal_threads"] else "unequal threads")
            for r in report["results"]]
    lines += common.table(("flip", "threads", "ours img/s", "IRI threads", "ImageRecordIter img/s", "ratio", "note"),
                      rows)
    lines += [
        "",
        "ours = data.FaceIter (the trainer's reader); ratio = ours / ImageRecordIter; each reader decodes every "
        "image once in a random order, timed from creating the iterator to its last batch.",
        "ImageRecordIter cannot read an insightface rec (the empty header and identity records stop its "
        "decoder), hence the copy.",
        f"ImageRecordIter decodes with at most max(cores / 2 - 1, 1) threads whatever it is asked: "
        f"{c['image_record_iter_max_threads']} here.",
        f"wall time {report['wall_s']:.1f} s",
    ]
    return "\n".join(lines) + "\n"


DESCRIPTION = ("Launch the trainer (horovodrun -np W --gloo, or one process at W = 1) on synthetic images for each "
               "class count and sample rate and report samples/s, the FC head's share of the step and the ratio "
               "to the largest rate. Run it as a plain command, not under a launcher. With --test-io: images/s "
               "of our reader against mx.io.ImageRecordIter on the same images, with and without flips.")


def add_arguments(parser) -> None:
    parser.add_argument("--classes", type=list_of(positive_int), default=list(DEFAULT_CLASSES), metavar="N[,N...]",
                        help="total class counts (default: %(default)s)")
    parser.add_argument("--rates", type=list_of(rate), default=list(DEFAULT_RATES), metavar="R[,R...]",
                        help="sample rates; ratios are taken against the largest (default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=DEFAULT_WORKERS,
                        help="worker processes; 1 runs without a launcher (default: %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=None,
                        help=f"images per worker (default: {DEFAULT_BATCH}; --test-io: images per batch, "
                             f"{DEFAULT_IO_BATCH})")
    parser.add_argument("--dim", type=positive_int, default=DEFAULT_DIM, help="embedding size D (default: %(default)s)")
    parser.add_argument("--network", default=DEFAULT_NETWORK, help="backbone (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="steps not timed (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                        help="timed steps per point; the median is reported (default: %(default)s)")
    parser.add_argument("--omp-threads", type=positive_int, default=None,
                        help="OMP_NUM_THREADS of each worker (default: cores // workers)")
    common.add_bank_dtype(parser)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the runs and of --test-io's synthetic images (default: %(default)s)")
    parser.add_argument("--test-io", action="store_true", help="compare the readers instead of training")
    parser.add_argument("--data-dir", default=None,
                        help="--test-io: dataset folder or .rec (default: a small synthetic one in a temporary folder)")
    parser.add_argument("--threads", type=list_of(positive_int), default=list(DEFAULT_IO_THREADS), metavar="T[,T...]",
                        help="--test-io: decode thread counts of both readers (default: %(default)s)")
    parser.add_argument("--batches", type=positive_int, default=DEFAULT_IO_BATCHES,
                        help="--test-io: batches after the first (default: %(default)s)")
    parser.add_argument("--repeat", type=positive_int, default=DEFAULT_IO_REPEAT,
                        help="--test-io: runs of each reader; the median is reported (default: %(default)s)")


def run(args) -> int:
    if args.test_io:
        benchmark_io(args.data_dir, batch=args.batch or DEFAULT_IO_BATCH, threads=args.threads,
                     batches=args.batches, repeat=args.repeat, seed=args.seed, as_json=args.json)
    else:
        benchmark(args.classes, args.rates, workers=args.workers, batch=args.batch or DEFAULT_BATCH, dim=args.dim,
                  network=args.network, warmup=args.warmup, steps=args.steps, omp_threads=args.omp_threads,
                  bank_dtype=args.bank_dtype, seed=args.seed, as_json=args.json)
    return 0

