"""The trainer: a data-parallel MXNet backbone with the Partial FC head (DESIGN §3), run once per rank.

    horovodrun -np 8 -H localhost:8 bash config.sh      (config.sh ends with `partial-fc train`)

init → data sharded by rank → backbone bound and parameters broadcast → optimizer wrapped by Horovod →
the Partial FC operator → loop: forward, head forward/backward (its own collectives), backbone backward
with the head's feature gradients, both updates, report, verify, checkpoint.

Every source of randomness is a function of (seed, step, rank): data order and flips, center sampling,
dropout. With the checkpointed parameters, optimizer state and centers, a resumed run therefore repeats
the uninterrupted run's numbers exactly (at the same world size).
"""
from __future__ import annotations

import glob
import json
import os
import sys
import time
import warnings
import zlib

import mxnet as mx
import numpy as np

import symbols

from .. import atomic, checkpoint, dist
from ..config import Config, ConfigError
from ..data import loader as data
from ..head.margin import Margin
from ..head.memory_bank import MemoryBank
from ..head.operator import PartialFC
from ..head.sharding import shard_range
from .loss_scale import LossScaler
from .report import Reporter
from .schedule import learning_rate, scaled_base
from .watchdog import Watchdog

IMAGE_SHAPE = (3, 112, 112)


class TrainingError(RuntimeError):
    """The run cannot continue (a non-finite loss, a checkpoint that does not fit, ...)."""


def _context(comm) -> mx.Context:
    return mx.gpu(comm.local_rank) if mx.context.num_gpus() > 0 else mx.cpu()


def _resume_checkpoint(cfg: Config) -> checkpoint.Checkpoint | None:
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


def _verification_sets(cfg: Config) -> list[str]:
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


def _open_data(cfg: Config, comm, start_step: int):
    """(iterator, num_classes). A data folder's property file is the truth about the class count."""
    if not cfg.data_dir:
        it = data.SyntheticIter(cfg.batch_size, cfg.num_classes, comm.rank, comm.size, seed=cfg.seed,
                                start_step=start_step, image_size=IMAGE_SHAPE[1:],
                                identities=cfg.synthetic_identities)
        return it, cfg.num_classes
    ds = data.open_rec(cfg.data_dir)
    if cfg.num_classes and cfg.num_classes != ds.num_classes:
        raise ConfigError(f"PFC_NUM_CLASSES={cfg.num_classes} disagrees with {cfg.data_dir}'s "
                          f"{ds.num_classes} classes (property file)")
    if tuple(ds.image_size) != IMAGE_SHAPE[1:]:
        raise ConfigError(f"{cfg.data_dir}: images are {ds.image_size}, the networks take {IMAGE_SHAPE[1:]}")
    if len(ds) < cfg.batch_size * comm.size:
        raise ConfigError(f"{cfg.data_dir}: {len(ds)} images, fewer than one global batch "
                          f"({cfg.batch_size} x {comm.size} workers)")
    it = data.FaceIter(ds, cfg.batch_size, comm.rank, comm.size, seed=cfg.seed, start_step=start_step,
                       threads=cfg.data_threads, max_bad_fraction=cfg.max_bad_fraction)
    return it, ds.num_classes


def _bind_backbone(cfg: Config, ctx, ckpt):
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
    else:
        mx.random.seed(cfg.seed)
        mod.init_params(initializer=mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2))
    return sym, mod


def run(cfg: Config) -> list[float]:
    """Train per `cfg` on this rank; returns the global loss of every step run."""
    if cfg.network not in symbols.NETWORKS:  # before any launcher-wide work starts
        raise ConfigError(f"PFC_NETWORK={cfg.network!r} is not a known network (known: {', '.join(symbols.NETWORKS)})")
    comm = dist.init(cfg.comm)              # the FC's collectives
    sync = dist.BackboneSync(cfg.comm)      # Horovod: the backbone's gradients and initial parameters
    if sync.size != comm.size:
        raise ConfigError(f"PFC_COMM={cfg.comm} sees {comm.size} workers but Horovod sees {sync.size}: "
                          f"launch with horovodrun or mpirun consistently")
    ctx = _context(comm)
    if cfg.fp16 and ctx.device_type == "cpu":
        raise ConfigError("PFC_FP16=1 needs a GPU: MXNet's CPU build has no fp16 matrix multiply")
    watchdog = Watchdog(comm, cfg.collective_timeout)
    # Start-up (indexing a large rec, binding, the parameter broadcast) may keep one rank waiting for another.
    watchdog.arm("start-up", cfg.slow_timeout, "PFC_SLOW_TIMEOUT")
    it = report = None
    try:
        ckpt = _resume_checkpoint(cfg)
        start_step = ckpt.step if ckpt else 0
        total_steps = cfg.total_steps
        it, num_classes = _open_data(cfg, comm, start_step)
        _check_same_everywhere(cfg, comm, num_classes)
        if ckpt is not None:
            checkpoint.check_compatible(ckpt, network=cfg.network, num_classes=num_classes,
                                        embedding_size=cfg.embedding_size)

        sym, mod = _bind_backbone(cfg, ctx, ckpt)
        arg, aux = mod.get_params()
        params = {**arg, **aux}
        sync.broadcast_parameters(params)       # Horovod: every rank starts from rank 0's weights
        mod.set_params({k: params[k] for k in arg}, {k: params[k] for k in aux})

        global_batch = cfg.batch_size * comm.size
        base_lr = scaled_base(cfg.lr, global_batch)
        bank_lr = scaled_base(cfg.memory_bank_lr, global_batch)
        sgd = init_optimizer(mod, sync, lr=base_lr, momentum=cfg.momentum, wd=cfg.weight_decay, fp16=cfg.fp16)
        rescale = sgd.rescale_grad
        scaler = None
        if cfg.fp16:
            scaler = LossScaler(**(ckpt.meta.get("trainer", {}).get("loss_scale", {}) if ckpt else {}))
        if ckpt is not None:
            mod.load_optimizer_states(ckpt.states_path)

        _check_bank_fits_one_ndarray(cfg, comm, num_classes)
        fc = PartialFC(comm, num_classes, cfg.embedding_size, Margin(cfg.margin_s, *cfg.margins), cfg.sample_rate,
                       seed=cfg.seed, ctx=ctx, storage=cfg.memory_bank, momentum=cfg.momentum, wd=cfg.weight_decay,
                       bank_dtype=cfg.bank_dtype,
                       bank=_bank(cfg, comm, ckpt, num_classes, ctx))

        report = Reporter(cfg.output, active=comm.rank == 0, world_size=comm.size, batch_size=cfg.batch_size,
                          total_steps=total_steps, frequent=cfg.frequent, start_step=start_step,
                          tensorboard=cfg.tensorboard)
        verifier = None
        if comm.rank == 0:
            os.makedirs(cfg.output, exist_ok=True)
            for path in checkpoint.remove_incomplete(cfg.output):
                report.info(f"removed {path}: left by a save that did not finish")
            atomic.write_text(os.path.join(cfg.output, "config.json"), cfg.to_json())
            bins = _verification_sets(cfg)
            if bins:
                from ..evaluation.protocol import Verifier
                verifier = Verifier(bins, sym, batch_size=cfg.eval_batch_size)
            report.info(_banner(cfg, comm, fc, num_classes, start_step, total_steps, bins, ckpt))

        losses, bad_seen = [], 0
        for step in range(start_step, total_steps):
            # The first step also pays for MXNet's lazy initialisation: give it the longer allowance.
            if step == start_step:
                watchdog.arm(f"step {step}", cfg.slow_timeout, "PFC_SLOW_TIMEOUT")
            else:
                watchdog.arm(f"step {step}")
            images, labels = next(it)
            if getattr(it, "bad_records", 0) > bad_seen:
                bad_seen = it.bad_records
                # Every rank reads its own records, so every rank speaks for itself (not only rank 0).
                print(f"partial-fc: warning: rank {comm.rank}: {bad_seen} bad image record(s) skipped so far "
                      f"in {cfg.data_dir} ({it.first_bad_text()}); the run stops when more than "
                      f"PFC_MAX_BAD_FRACTION={cfg.max_bad_fraction} of the images read are bad",
                      file=sys.stderr, flush=True)
            lr = learning_rate(step, base_lr, cfg.lr_step_list, cfg.warmup_steps)
            sgd.lr = lr
            mx.random.seed(cfg.seed * 1_000_003 + step * 1009 + comm.rank)  # dropout: a function of the step
            mod.forward(mx.io.DataBatch([mx.nd.array(images, ctx=ctx)]), is_train=True)
            features = mod.get_outputs()[0]
            head = _HeadTimer(cfg.profile, comm)
            out = head(fc.forward_backward, features, labels, step)
            if not np.isfinite(out.loss):
                raise TrainingError(f"step {step}: the loss is {out.loss}; stopping before the update so the "
                                    f"last checkpoint stays good (lower PFC_LR?)")
            scale = scaler.scale if scaler else 1.0
            mod.backward(out_grads=[out.feature_grad * scale] if scaler else [out.feature_grad])
            overflow = gradients_overflow(mod, comm)  # every rank learns whether any rank's gradients are finite
            if overflow and scaler is None:
                raise TrainingError(f"step {step}: a backbone gradient is inf or NaN on some rank (the loss is "
                                    f"{out.loss:.4f}); stopping before the update so the last checkpoint stays "
                                    f"good (lower PFC_LR?)")
            if scaler is None or scaler.update(overflow):
                sgd.rescale_grad = rescale / scale
                mod.update()
                head(fc.update, out, learning_rate(step, bank_lr, cfg.lr_step_list, cfg.warmup_steps))
            else:
                report.info(f"step {step}: fp16 gradients overflowed on some rank; step skipped on every rank, "
                            f"loss scale now {scaler.scale:g}")
            losses.append(out.loss)
            report.step(step, out.loss, lr, **({"fc_s": round(head.seconds, 6)} if cfg.profile else {}))

            done = step + 1
            watchdog.disarm(step=True)
            if done % cfg.verbose == 0 or done == total_steps:
                watchdog.arm(f"verification after step {done}", cfg.slow_timeout, "PFC_SLOW_TIMEOUT")
                if verifier is not None:
                    report.verification(done, verifier.run(*mod.get_params()))
                # Horovod: the other ranks wait here for rank 0's evaluation, under the longer allowance.
                comm.barrier("pfc.verification_done")
                watchdog.disarm()
            if cfg.save_checkpoints and (done % cfg.save_every == 0 or done == total_steps):
                with watchdog.watch(f"saving the checkpoint of step {done}", cfg.slow_timeout, "PFC_SLOW_TIMEOUT"):
                    _save(cfg, comm, mod, sym, fc, num_classes, done, scaler)
        report.summary()
    except mx.base.MXNetError as e:
        if "horovod" not in str(e).lower():
            raise
        # A collective failed: a peer exited (the launcher stops the others too) or Horovod shut down.
        raise TrainingError(f"rank {comm.rank}: collective '{comm.last_collective}' failed: "
                            f"{_first_line(e)}; another rank has probably died (see its output)") from None
    finally:
        watchdog.close()
        if hasattr(it, "close"):
            it.close()
        if report is not None:
            report.close()
    return losses


def _check_bank_fits_one_ndarray(cfg: Config, comm, num_classes: int) -> None:
    """A device bank is one NDArray per array; MXNet builds without 64-bit tensor sizes (the pip packages)
    cannot hold 2^31 values or more in one, and fail with an unrelated message."""
    count = shard_range(num_classes, comm.size, comm.rank)[1]
    if cfg.memory_bank == "device" and count * cfg.embedding_size >= 2**31 \
            and not mx.runtime.Features().is_enabled("INT64_TENSOR_SIZE"):
        raise ConfigError(f"this rank's centers ({count} x {cfg.embedding_size}) exceed the 2^31 values one MXNet "
                          f"NDArray can hold in this build: set PFC_MEMORY_BANK=host, or use more workers")


def _first_line(error) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _check_same_everywhere(cfg: Config, comm, num_classes: int) -> None:
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


class _HeadTimer:
    """PFC_PROFILE=1: seconds this step spent in the FC head (forward_backward + update).

    MXNet is asynchronous, so a timed call waits for the queue before and after, and the ranks meet at a
    barrier first (a wait for a slower rank's backbone is not the head's time); with profiling off the call
    goes straight through and adds no wait."""

    def __init__(self, active: bool, comm):
        self.active, self.comm, self.seconds = active, comm, 0.0

    def __call__(self, fn, *args):
        if not self.active:
            return fn(*args)
        mx.nd.waitall()
        self.comm.barrier("pfc.profile")  # Horovod: every rank profiles, so every rank calls it
        t0 = time.perf_counter()
        result = fn(*args)
        mx.nd.waitall()
        self.seconds += time.perf_counter() - t0
        return result


def init_optimizer(mod, sync, *, lr, momentum, wd, fp16=False) -> mx.optimizer.SGD:
    """Give the bound Module an SGD whose update applies the SUM over ranks of their gradients.

    The head hands each rank its share of the gradient of the GLOBAL mean loss, so the true backbone
    gradient is the sum over ranks; Horovod's DistributedOptimizer averages, hence rescale_grad = world
    size. Weight decay follows MXNet's rule (only *_weight and *_gamma), which needs the parameter names.
    Returns the inner SGD, whose `lr` the loop sets every step.
    """
    sgd = mx.optimizer.SGD(learning_rate=lr, momentum=momentum, wd=wd, rescale_grad=float(sync.size),
                           multi_precision=fp16, param_idx2name=dict(enumerate(mod._param_names)))
    with warnings.catch_warnings():
        # Module warns that rescale_grad is not 1/batch: intended, the head's gradients are already means.
        warnings.filterwarnings("ignore", message="Optimizer created manually")
        mod.init_optimizer(kvstore=None, optimizer=sync.optimizer(sgd), force_init=True)
    return sgd


def _bank(cfg, comm, ckpt, num_classes, ctx):
    if ckpt is None:
        return None  # PartialFC creates a fresh shard from the seed
    start, count = shard_range(num_classes, comm.size, comm.rank)
    weight, mom = ckpt.centers(start, count, cfg.bank_dtype)  # converted if saved in another dtype
    return MemoryBank(weight, mom, ctx=ctx, storage=cfg.memory_bank, momentum=cfg.momentum,
                      wd=cfg.weight_decay, copy=False, dtype=cfg.bank_dtype)


def gradients_overflow(mod, comm) -> bool:
    """Whether any backbone gradient on any rank holds inf or NaN (then every rank skips the step)."""
    # Summing in fp32 propagates inf/NaN and cannot itself overflow from finite fp16 values. One sum per
    # array, added on the device, and a single wait: this runs every step.
    sums = [mx.nd.sum(g if g.dtype == np.float32 else g.astype(np.float32))
            for grads in mod._exec_group.grad_arrays for g in grads]
    local = float(mx.nd.add_n(*sums).asscalar()) if sums else 0.0
    flag = mx.nd.array([0.0 if np.isfinite(local) else 1.0])
    # Horovod: every rank runs this reduction every step, so the decision (stop, or skip in fp16) is the same
    # everywhere.
    return bool(comm.allreduce(flag, "max", "pfc.grad_overflow").asscalar() > 0)


def _save(cfg, comm, mod, sym, fc, num_classes, step, scaler=None):
    arg, aux = mod.get_params()
    meta = dict(network=cfg.network, num_classes=num_classes, embedding_size=cfg.embedding_size,
                sample_rate=cfg.sample_rate, seed=cfg.seed, batch_size=cfg.batch_size, fp16=cfg.fp16,
                config=json_config(cfg), trainer={"loss_scale": scaler.state()} if scaler else {})
    path = checkpoint.save(cfg.output, step, comm=comm, symbol=sym, arg_params=arg, aux_params=aux,
                           save_states=mod.save_optimizer_states, centers=fc.bank.numpy(), meta=meta, keep=cfg.keep_checkpoints,
                           bank_dtype=fc.bank.dtype)
    if comm.rank == 0:
        print(f"saved checkpoint {path}", flush=True)


def json_config(cfg: Config) -> dict:
    return json.loads(cfg.to_json())


def _banner(cfg, comm, fc, num_classes, start_step, total_steps, bins, ckpt) -> str:
    lines = [
        f"Partial FC training: {comm.size} worker(s), FC collectives via {comm.transport}, "
        f"{'GPU' if mx.context.num_gpus() else 'CPU'}",
        f"  network {cfg.network} (D={cfg.embedding_size}{', fp16' if cfg.fp16 else ''}), "
        f"{num_classes} classes, this rank holds [{fc.start}, {fc.start + fc.count}), sample rate {cfg.sample_rate}",
        f"  loss {cfg.loss} s={cfg.margin_s} m={cfg.margins}, batch {cfg.batch_size}/worker "
        f"({cfg.batch_size * comm.size} global), lr {cfg.lr} per 512 (steps {cfg.lr_steps}, warmup "
        f"{cfg.warmup_steps})",
        f"  data {cfg.data_dir or 'synthetic images'}; verification sets: "
        f"{', '.join(os.path.basename(b) for b in bins) or 'none'}",
        f"  steps {start_step} -> {total_steps}" + (f" (resumed from {ckpt.path})" if ckpt else "")
        + f"; output {cfg.output}",
        "  config: " + " ".join(f"{k}={v}" for k, v in sorted(json_config(cfg).items())),
    ]
    return "\n".join(lines)
