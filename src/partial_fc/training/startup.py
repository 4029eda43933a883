"""The trainer's start-up pieces and checks, each a plain function the trainer's setup() calls in order.

Checks come before the work they protect: a setting every rank must share is compared across ranks before
the backbone is bound, a checkpoint of another model is refused before its parameters are loaded, and a
bank too large for one NDArray is refused before it is allocated. Each refusal is a ConfigError (or the
checkpoint's CheckpointError) whose message names the setting or file.
"""
from __future__ import annotations

import glob
import json
import os
import socket
import time
import uuid
import zlib

import mxnet as mx
import numpy as np

import symbols

from .. import checkpoint
from ..config import TRIPLET, Config, ConfigError
from ..data import loader
from ..data.pk_sampler import PKFaceIter
from ..head.memory_bank import MemoryBank
from ..head.sampler import num_sampled
from ..head.sharding import shard_range
from . import imprinting, pretrained

IMAGE_SHAPE = (3, 112, 112)
# How long a rank other than 0 holds back its error line (see let_rank_0_speak).
SECOND_VOICE_S = 5.0


def let_rank_0_speak(rank: int | None) -> None:
    """Called by a failing rank before it prints its one-line error.

    A bad setting, a missing dataset or a non-finite loss is found by every rank at once: W copies of the
    line (and, under horovodrun, its traceback after each) bury it. A rank other than 0 therefore waits a
    few seconds first: when rank 0 found the same, it has printed it and exited, and the launcher stops this
    rank during the wait (horovodrun at once; mpirun after its odls_base_sigkill_timeout); when only this
    rank found it, nobody stops it and its line follows. Without a launcher (rank None) nothing waits."""
    if rank:
        time.sleep(SECOND_VOICE_S)


def context(comm) -> mx.Context:
    return mx.gpu(comm.local_rank) if mx.context.num_gpus() > 0 else mx.cpu()


OUTPUT_CHECK_PREFIX = ".pfc-output-check-"  # + a random hex token: unique per run, removed by rank 0 at once
HOST_BYTES = 64  # of each rank's host name carried by the check's allgather
OUTPUT_CHECK_TRIES = 5  # a rank that does not see the token looks again this often, 0.5 s apart


def check_output_shared(cfg: Config, comm) -> None:
    """Stop every rank, before anything reads or writes PFC_OUTPUT, unless it is one folder every rank sees.

    Each rank writes its own shard of every checkpoint into PFC_OUTPUT, and rank 0 the manifest that names
    them all: with a folder of the same name on each host instead of one shared folder, the saves would look
    fine and no host would hold a loadable checkpoint. Rank 0 writes a file with a random token there; every
    rank reads it back (one allgather gives each rank the token and every rank's host name, a second one
    every rank's answer); rank 0 removes it. Any rank that does not see it makes every rank raise the same
    ConfigError, naming those ranks and their hosts. World size 1 has nothing to compare, and a run that
    neither saves nor resumes a checkpoint (PFC_SAVE_CHECKPOINTS=0: benchmarks) has only rank 0 write there."""
    resuming = cfg.resume.strip().lower() not in ("", "0", "false", "no")
    if comm.size == 1 or not (cfg.save_checkpoints or resuming):
        return
    host = socket.gethostname()
    token, path, problem = "", "", ""
    if comm.rank == 0:
        token = uuid.uuid4().hex
        path = os.path.join(cfg.output, OUTPUT_CHECK_PREFIX + token)
        try:
            os.makedirs(cfg.output, exist_ok=True)
            with open(path, "w") as f:  # whole before any rank looks: they read it after the allgather below
                f.write(token)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            token, problem = "", f"{e.strerror or e}"
    row = np.zeros((1, 32 + HOST_BYTES), dtype=np.int64)
    row[0, :len(token)] = list(token.encode())
    name = host.encode()[:HOST_BYTES]
    row[0, 32:32 + len(name)] = list(name)
    every = comm.allgather(mx.nd.array(row, dtype=np.int64), "pfc.output_check.token").asnumpy()
    hosts = [bytes(int(c) for c in r[32:] if c).decode(errors="replace") for r in every]
    token = bytes(int(c) for c in every[0, :32] if c).decode()
    seen = False
    if token:
        path = os.path.join(cfg.output, OUTPUT_CHECK_PREFIX + token)
        for attempt in range(OUTPUT_CHECK_TRIES):  # a network filesystem may show a new file a moment late
            try:
                with open(path) as f:
                    seen = f.read() == token
            except OSError:
                seen = False
            if seen or attempt == OUTPUT_CHECK_TRIES - 1:
                break
            time.sleep(0.5)
    flags = comm.allgather(mx.nd.array([[1 if seen else 0]], dtype=np.int64), "pfc.output_check.seen").asnumpy()
    if comm.rank == 0 and token:
        try:
            os.remove(path)
        except OSError:
            pass
    if not token:
        raise ConfigError(f"PFC_OUTPUT={cfg.output}: rank 0 (host {hosts[0]}) cannot write there"
                          + (f" ({problem})" if problem else "") + "; it must be a folder every host can write")
    blind = [k for k in range(comm.size) if not flags[k, 0]]
    if blind:
        by_host = {}
        for k in blind:
            by_host.setdefault(hosts[k], []).append(k)
        who = "; ".join(f"{'rank' if len(ks) == 1 else 'ranks'} {', '.join(map(str, ks))} (host {h}"
                        + (", the same host name as rank 0's: another container or mount namespace" if h == hosts[0]
                           else "") + ")" for h, ks in by_host.items())
        raise ConfigError(f"PFC_OUTPUT={cfg.output} is not one folder every host shares: {who} "
                          f"{'does' if len(blind) == 1 else 'do'} not see the file rank 0 (host {hosts[0]}) wrote "
                          f"there; every rank writes its checkpoint shard into PFC_OUTPUT, so it must be a shared "
                          f"folder (NFS, ...) mounted at that path on every host")


def resume_checkpoint(cfg: Config) -> checkpoint.Checkpoint | None:
    value = cfg.resume.strip()
    if value.lower() in ("", "0", "false", "no"):
        existing = checkpoint.latest(cfg.output)
        if existing:
            raise ConfigError(f"PFC_OUTPUT={cfg.output} already holds a checkpoint ({existing}); set PFC_RESUME=1 "
                              f"to continue it or choose another PFC_OUTPUT (nothing is overwritten)")
        return None
    if value.lower() in ("1", "true", "yes", "latest"):
        path = checkpoint.latest(cfg.output)
        if path is None:
            raise ConfigError(f"PFC_RESUME={value}: no complete checkpoint in PFC_OUTPUT={cfg.output}")
        return checkpoint.load(path)
    return checkpoint.load(value)


def verification_sets(cfg: Config) -> list[str]:
    if not cfg.data_dir:
        return []
    if cfg.val_targets:
        paths = [os.path.join(cfg.data_dir, n if n.endswith(".bin") else n + ".bin")
                 for n in cfg.val_targets.split(",") if n.strip()]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise ConfigError(f"PFC_VAL_TARGETS: {', '.join(missing)} not found")
        return paths
    return sorted(glob.glob(os.path.join(glob.escape(cfg.data_dir), "*.bin")))


def open_data(cfg: Config, comm, start_step: int):
    """(iterator, num_classes). A data folder's property file is the truth about the class count."""
    if not cfg.data_dir:
        it = loader.SyntheticIter(cfg.batch_size, cfg.num_classes, comm.rank, comm.size, seed=cfg.seed,
                                  start_step=start_step, image_size=IMAGE_SHAPE[1:],
                                  identities=cfg.synthetic_identities)
        return it, cfg.num_classes
    ds = loader.open_rec(cfg.data_dir)
    if cfg.num_classes and cfg.num_classes != ds.num_classes:
        raise ConfigError(f"PFC_NUM_CLASSES={cfg.num_classes} disagrees with {cfg.data_dir}'s "
                          f"{ds.num_classes} classes (property file)")
    if tuple(ds.image_size) != IMAGE_SHAPE[1:]:
        raise ConfigError(f"{cfg.data_dir}: images are {ds.image_size}, the networks take {IMAGE_SHAPE[1:]}")
    if len(ds) < cfg.batch_size * comm.size:
        raise ConfigError(f"{cfg.data_dir}: {len(ds)} images, fewer than one global batch "
                          f"({cfg.batch_size} x {comm.size} workers)")
    if cfg.loss == TRIPLET:  # P identities x K images per rank (data/pk_sampler.py)
        it = PKFaceIter(ds, cfg.batch_size, comm.rank, comm.size, cfg.triplet_images, seed=cfg.seed,
                        start_step=start_step, threads=cfg.data_threads, max_bad_fraction=cfg.max_bad_fraction)
        return it, ds.num_classes
    it = loader.FaceIter(ds, cfg.batch_size, comm.rank, comm.size, seed=cfg.seed, start_step=start_step,
                         threads=cfg.data_threads, max_bad_fraction=cfg.max_bad_fraction)
    return it, ds.num_classes


def check_same_everywhere(cfg: Config, comm, num_classes: int) -> None:
    """Every rank must run the same problem; differing settings would mis-shape or silently skew collectives.

    One small allgather at start-up compares the settings that shape the collectives and the schedule.
    """
    shaped = {"PFC_BATCH_SIZE": cfg.batch_size, "PFC_EMBEDDING_SIZE": cfg.embedding_size,
              "num_classes": num_classes, "PFC_MAX_STEPS": cfg.total_steps, "PFC_SEED": cfg.seed}
    text = json.dumps({k: v for k, v in json_config(cfg).items() if k not in ("output", "resume")}, sort_keys=True)
    shaped["other PFC_* settings (hash)"] = zlib.crc32(text.encode())
    mine = mx.nd.array(list(shaped.values()), dtype=np.int64)
    every = comm.allgather(mine.reshape((1, -1)), "pfc.settings_check").asnumpy()
    for column, key in enumerate(shaped):
        values = every[:, column]
        if (values != values[0]).any():
            per_rank = ", ".join(f"rank {k}: {v}" for k, v in enumerate(values.tolist()))
            raise ConfigError(f"{key} differs between ranks ({per_rank}); every rank must use the same settings")


def bind_backbone(cfg: Config, ctx, ckpt):
    """(symbol, bound Module) with the checkpoint's parameters, or fresh ones from the seed."""
    # MXNet's CPU PReLU backward is most of an mbf step; the depthwise form is the same function with the
    # same parameters (checkpoints move freely between the two), about 4x faster on CPU.
    prelu = "depthwise" if ctx.device_type == "cpu" else "leakyrelu"
    sym = symbols.get_symbol(cfg.network, embedding_size=cfg.embedding_size, fp16=cfg.fp16, dropout=cfg.dropout,
                             prelu_impl=prelu)
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=ctx)
    mod.bind(data_shapes=[("data", (cfg.batch_size,) + IMAGE_SHAPE)], for_training=True)
    if ckpt is not None:
        arg, aux = ckpt.backbone()
        mod.init_params(arg_params=arg, aux_params=aux, allow_missing=False, allow_extra=False)
    elif cfg.pretrained:  # PFC_PRETRAINED: a new run from a model (training/pretrained.py); resuming wins over it
        source = pretrained.load(cfg, sym)
        mx.random.seed(cfg.seed)  # what the file lacks (PFC_PRETRAINED_STRICT=0) starts as a fresh run's would
        mod.init_params(initializer=mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2),
                        arg_params=source.arg_params, aux_params=source.aux_params,
                        allow_missing=bool(source.missing or source.reshaped), allow_extra=False)
        cfg.pretrained_from = dict(source.describe(), summary=source.summary())
    else:
        mx.random.seed(cfg.seed)
        mod.init_params(initializer=mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2))
    return sym, mod


def check_bank_fits_one_ndarray(cfg: Config, comm, num_classes: int) -> None:
    """A device bank is one NDArray per array; MXNet builds without 64-bit tensor sizes (the pip packages)
    cannot hold 2^31 values or more in one, and fail with an unrelated message."""
    count = shard_range(num_classes, comm.size, comm.rank)[1]
    if cfg.memory_bank == "device" and count * cfg.embedding_size >= 2**31 \
            and not mx.runtime.Features().is_enabled("INT64_TENSOR_SIZE"):
        raise ConfigError(f"this rank's centers ({count} x {cfg.embedding_size}) exceed the 2^31 values one MXNet "
                          f"NDArray can hold in this build: set PFC_MEMORY_BANK=host, or use more workers")


def bank(cfg: Config, comm, ckpt, num_classes: int, ctx, backbone=None, data=None) -> MemoryBank | None:
    """This rank's shard of the checkpoint's centers and momentum; for a fresh run with PFC_INIT_CENTERS=imprint,
    the centers imprinted by `backbone` from `data`'s images; None for another fresh run (or a triplet run)."""
    if cfg.loss == TRIPLET:
        return None  # no centers
    if ckpt is None and cfg.init_centers == "imprint":
        imprinted, cfg.pretrained_from["imprinted"] = imprinting.imprinted_bank(cfg, comm, backbone, data.dataset,
                                                                               num_classes, ctx)
        return imprinted
    if ckpt is None:
        return None  # PartialFC creates a fresh shard from the seed
    start, count = shard_range(num_classes, comm.size, comm.rank)
    weight, mom = ckpt.centers(start, count, cfg.bank_dtype)  # converted if saved in another dtype
    return MemoryBank(weight, mom, ctx=ctx, storage=cfg.memory_bank, momentum=cfg.momentum,
                      wd=cfg.weight_decay, copy=False, dtype=cfg.bank_dtype)


def json_config(cfg: Config) -> dict:
    return json.loads(cfg.to_json())


def sampling_line(cfg: Config, comm, fc) -> str:
    """How many of rank 0's centers a step uses, and of what kind (the log's `kept` figures are the same
    rank's, averaged over each report window)."""
    global_batch = cfg.batch_size * comm.size
    rows = num_sampled(fc.count, cfg.sample_rate, 0)
    most = min(global_batch, fc.count)
    if rows >= fc.count:
        return (f"  sampling: r = {cfg.sample_rate:g} keeps all {fc.count} centers of the shard every step "
                f"(the batch's positives and every negative class)")
    return (f"  sampling: each step keeps max({rows}, #positives) of the shard's {fc.count} centers: the global "
            f"batch's classes on the shard (at most {most}) and negatives drawn at random for the rest")


def banner(cfg: Config, comm, fc, num_classes, start_step, total_steps, bins, ckpt) -> str:
    """What rank 0 prints before the first step: the run's shape, its data, its steps, every setting."""
    lines = [
        f"Partial FC training: {comm.size} worker(s), FC collectives via {comm.transport}, "
        f"{'GPU' if mx.context.num_gpus() else 'CPU'}",
        f"  network {cfg.network} (D={cfg.embedding_size}{', fp16' if cfg.fp16 else ''}), "
        f"{num_classes} classes, this rank holds [{fc.start}, {fc.start + fc.count}), sample rate {cfg.sample_rate}",
        (f"  loss triplet margin={cfg.triplet_margin} ({cfg.batch_size // cfg.triplet_images} identities x "
         f"{cfg.triplet_images} images per worker, no FC head)" if cfg.loss == TRIPLET else
         f"  loss {cfg.loss} s={cfg.margin_s} m={cfg.margins}") + f", batch {cfg.batch_size}/worker "
        f"({cfg.batch_size * comm.size} global), lr {cfg.lr} per 512 ("
        + (f"poly power {cfg.lr_power}" if cfg.lr_schedule == "poly" else f"steps {cfg.lr_steps}")
        + f", warmup {cfg.warmup_steps})",
        *([sampling_line(cfg, comm, fc)] if cfg.loss != TRIPLET else []),
        f"  data {cfg.data_dir or 'synthetic images'}; verification sets: "
        f"{', '.join(os.path.basename(b) for b in bins) or 'none'}",
        f"  steps {start_step} -> {total_steps}" + (f" (resumed from {ckpt.path})" if ckpt else "")
        + f"; output {cfg.output}",
        *([f"  {cfg.pretrained_from['summary']}"] if "summary" in cfg.pretrained_from and not ckpt else []),
        *([f"  centers imprinted: {cfg.pretrained_from['imprinted']['classes']} of {num_classes} classes from "
           f"{cfg.pretrained_from['imprinted']['images']} images"] if "imprinted" in cfg.pretrained_from else []),
        "  config: " + " ".join(f"{k}={v}" for k, v in sorted(json_config(cfg).items()) if k != "pretrained_from"),
    ]
    return "\n".join(lines)
