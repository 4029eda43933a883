"""`partial-fc train`: one rank of a data-parallel MXNet backbone trained with the Partial FC head (docs/design.md §3).

    horovodrun -np 8 -H localhost:8 bash config.sh      (config.sh ends with `partial-fc train`)

The module reads top to bottom, as Horovod's MXNet examples do:

    1. setup       init(): the FC's collectives and Horovod; setup(): resume checkpoint → data sharded by
                   rank → the settings compared across ranks → backbone bound → parameters broadcast from
                   rank 0 → SGD wrapped by Horovod's DistributedOptimizer → the Partial FC head → reporter,
                   verification, checkpointer. It returns a Trainer: the pieces a step needs.
    2. one step    train_step(): forward, the head's forward_backward (with its own collectives), the
                   non-finite checks, backward with the head's feature gradients, the overflow check, both
                   updates (or, in fp16, the skipped step); it returns the head's result: the global loss and the
                   centers this rank sampled, which the report sums up.
    3. the loop    train(): per step the stop check (a SIGTERM / SIGINT on any rank stops every rank here, after
                   a checkpoint: preemption.py), the watchdog's phase around the step and its report, then
                   verification and checkpoint saving when each says the step is theirs (periodic.py).
    4. the command add_arguments() and run(): `partial-fc train [--test-io]`.

Lines that exist only for distribution carry a `# Horovod:` comment. The start-up helpers and checks live
in startup.py. Every source of randomness is a function of (seed, step, rank): data order and flips, center
sampling, dropout. With the checkpointed parameters, optimizer state and centers, a resumed run therefore
repeats the uninterrupted run's numbers exactly (at the same world size).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from dataclasses import dataclass

import mxnet as mx
import numpy as np

import symbols

from .. import atomic, checkpoint, config, dist
from ..args import positive_int
from ..config import Config, ConfigError
from ..data import loader
from ..errors import UserError
from ..head.margin import Margin
from ..head.operator import PartialFC
from ..head.triplet import TripletHead
from . import startup
from .loss_scale import LossScaler
from .periodic import Checkpointer, Verification
from . import preemption
from .preemption import Preempted, Preemption
from .report import Reporter
from .schedule import scaled_base, scheduled
from .watchdog import Watchdog


class TrainingError(UserError, RuntimeError):
    """The run cannot continue (a non-finite loss, a failed collective, ...)."""


# --- 1. setup --------------------------------------------------------------------------------------------

def init(cfg: Config):
    """(comm, sync, ctx): the FC's collectives, Horovod's backbone sync and this rank's device."""
    if cfg.network not in symbols.NETWORKS:  # before any launcher-wide work starts
        raise ConfigError(f"PFC_NETWORK={cfg.network!r} is not a known network (known: {', '.join(symbols.NETWORKS)})")
    comm = dist.init(cfg.comm)              # the FC's collectives
    sync = dist.BackboneSync(cfg.comm)      # Horovod: hvd.init(); the backbone's gradients and initial parameters
    if sync.size != comm.size:  # Horovod: both transports must see the same workers
        raise ConfigError(f"PFC_COMM={cfg.comm} sees {comm.size} workers but Horovod sees {sync.size}: "
                          f"launch with horovodrun or mpirun consistently")
    ctx = startup.context(comm)
    if cfg.fp16 and ctx.device_type == "cpu":
        raise ConfigError("PFC_FP16=1 needs a GPU: MXNet's CPU build has no fp16 matrix multiply")
    return comm, sync, ctx


@dataclass
class Trainer:
    """The pieces one rank's steps need, built once by setup()."""
    cfg: Config
    comm: object                   # the FC's collectives (dist.py)
    ctx: mx.Context
    data: object                   # FaceIter or SyntheticIter: this rank's part of every global batch
    mod: mx.mod.Module             # the backbone
    sgd: mx.optimizer.SGD          # inside Horovod's DistributedOptimizer; the step sets lr and rescale_grad
    rescale: float                 # sgd.rescale_grad as set up, before any loss scale divides it
    scaler: LossScaler | None      # fp16 only
    fc: PartialFC
    report: Reporter
    verification: Verification
    checkpointer: Checkpointer
    base_lr: float                 # the backbone's and the centers' learning rates for this global batch
    bank_lr: float
    start_step: int
    total_steps: int


def setup(cfg: Config, comm, sync, ctx, cleanup: contextlib.ExitStack) -> Trainer:
    """Everything before the first step, in order. What must be closed at the end goes on `cleanup`, as soon
    as it exists, so a start-up that fails half way closes what it opened."""
    startup.check_output_shared(cfg, comm)  # Horovod: every host must see the one PFC_OUTPUT, before it is used
    ckpt = startup.resume_checkpoint(cfg)
    start_step = ckpt.step if ckpt else 0
    total_steps = cfg.total_steps
    data, num_classes = startup.open_data(cfg, comm, start_step)  # Horovod: each rank reads its own part
    cleanup.callback(data.close)
    startup.check_same_everywhere(cfg, comm, num_classes)         # Horovod: one allgather of the settings
    if ckpt is not None:
        checkpoint.check_compatible(ckpt, network=cfg.network, num_classes=num_classes,
                                    embedding_size=cfg.embedding_size)

    sym, mod = startup.bind_backbone(cfg, ctx, ckpt)
    arg, aux = mod.get_params()
    params = {**arg, **aux}
    sync.broadcast_parameters(params)       # Horovod: every rank starts from rank 0's weights
    mod.set_params({k: params[k] for k in arg}, {k: params[k] for k in aux})

    global_batch = cfg.batch_size * comm.size  # Horovod: the learning rates follow the global batch
    base_lr = scaled_base(cfg.lr, global_batch)
    bank_lr = scaled_base(cfg.memory_bank_lr, global_batch)
    sgd = init_optimizer(mod, sync, lr=base_lr, momentum=cfg.momentum, wd=cfg.weight_decay, fp16=cfg.fp16)
    rescale = sgd.rescale_grad
    scaler = None
    if cfg.fp16:
        scaler = LossScaler(**(ckpt.meta.get("trainer", {}).get("loss_scale", {}) if ckpt else {}))
    if ckpt is not None:
        mod.load_optimizer_states(ckpt.states_path)

    startup.check_bank_fits_one_ndarray(cfg, comm, num_classes)
    if cfg.loss == config.TRIPLET:  # no FC head: a margin triplet loss over the global batch (head/triplet.py)
        fc = TripletHead(comm, cfg.embedding_size, cfg.triplet_margin, ctx=ctx)
    else:  # the centers: from the checkpoint, imprinted (PFC_INIT_CENTERS=imprint), or fresh from the seed
        fc = PartialFC(comm, num_classes, cfg.embedding_size, Margin(cfg.margin_s, *cfg.margins), cfg.sample_rate,
                       seed=cfg.seed, ctx=ctx, storage=cfg.memory_bank, momentum=cfg.momentum, wd=cfg.weight_decay,
                       bank_dtype=cfg.bank_dtype,
                       bank=startup.bank(cfg, comm, ckpt, num_classes, ctx, backbone=mod, data=data))

    report = Reporter(cfg.output, active=comm.rank == 0, world_size=comm.size, batch_size=cfg.batch_size,
                      total_steps=total_steps, frequent=cfg.frequent, start_step=start_step,
                      tensorboard=cfg.tensorboard)
    cleanup.callback(report.close)
    verifier = None
    if comm.rank == 0:  # Horovod: one rank writes the run's own files and holds the verification sets
        os.makedirs(cfg.output, exist_ok=True)
        for path in checkpoint.remove_incomplete(cfg.output):
            report.info(f"removed {path}: left by a save that did not finish")
        atomic.write_text(os.path.join(cfg.output, "config.json"), cfg.to_json())
        bins = startup.verification_sets(cfg)
        if bins:
            from ..evaluation.protocol import Verifier
            verifier = Verifier(bins, sym, batch_size=cfg.eval_batch_size, ctx=ctx, shared_module=mod)
        report.info(startup.banner(cfg, comm, fc, num_classes, start_step, total_steps, bins, ckpt))
    return Trainer(cfg=cfg, comm=comm, ctx=ctx, data=data, mod=mod, sgd=sgd, rescale=rescale, scaler=scaler,
                   fc=fc, report=report,
                   verification=Verification(comm, report, verifier, mod, every=cfg.verbose, last=total_steps),
                   checkpointer=Checkpointer(cfg, comm, mod, sym, fc, num_classes, scaler, last=total_steps),
                   base_lr=base_lr, bank_lr=bank_lr, start_step=start_step, total_steps=total_steps)


def init_optimizer(mod, sync, *, lr, momentum, wd, fp16=False) -> mx.optimizer.SGD:
    """Give the bound Module an SGD whose update applies the SUM over ranks of their gradients.

    The head hands each rank its share of the gradient of the GLOBAL mean loss, so the true backbone
    gradient is the sum over ranks; Horovod's DistributedOptimizer averages, hence rescale_grad = world
    size. Weight decay follows MXNet's rule (only *_weight and *_gamma), which needs the parameter names.
    Returns the inner SGD, whose `lr` the step sets.
    """
    sgd = mx.optimizer.SGD(learning_rate=lr, momentum=momentum, wd=wd, rescale_grad=float(sync.size),
                           multi_precision=fp16, param_idx2name=dict(enumerate(mod._param_names)))
    with warnings.catch_warnings():
        # Module warns that rescale_grad is not 1/batch: intended, the head's gradients are already means.
        warnings.filterwarnings("ignore", message="Optimizer created manually")
        mod.init_optimizer(kvstore=None, optimizer=sync.optimizer(sgd), force_init=True)
    return sgd


# --- 2. one step -----------------------------------------------------------------------------------------

def train_step(t: Trainer, step: int, lr: float, head: _HeadTimer):
    """Run step `step` (0-based) on this rank at backbone learning rate `lr`; returns the head's result (its
    `loss` is the global loss; a Partial FC head's `sample` is what this rank's shard used).

    A non-finite loss or backbone gradient stops every rank before any update (TrainingError), so the last
    checkpoint stays good; in fp16 an overflow instead skips the step on every rank and halves the scale.
    """
    cfg, comm, mod = t.cfg, t.comm, t.mod
    images, labels = next(t.data)
    _warn_bad_records(t.data, cfg, comm.rank)
    t.sgd.lr = lr
    mx.random.seed(cfg.seed * 1_000_003 + step * 1009 + comm.rank)  # dropout: a function of the step
    frozen = step < cfg.freeze_backbone_steps  # PFC_FREEZE_BACKBONE_STEPS: the backbone as a fixed function
    mod.forward(mx.io.DataBatch([mx.nd.array(images, ctx=t.ctx)]), is_train=not frozen)
    features = mod.get_outputs()[0]
    out = head(t.fc.forward_backward, features, labels, step)
    if not np.isfinite(out.loss):
        raise TrainingError(f"step {step}: the loss is {out.loss}; stopping before the update so the "
                            f"last checkpoint stays good (lower PFC_LR?)")
    if frozen:  # only the head learns (the same steps on every rank: no backbone collective runs)
        head(t.fc.update, out, scheduled(cfg, step, t.bank_lr))
        return out
    scale = t.scaler.scale if t.scaler else 1.0
    mod.backward(out_grads=[out.feature_grad * scale] if t.scaler else [out.feature_grad])
    overflow = gradients_overflow(mod, comm)  # every rank learns whether any rank's gradients are finite
    if overflow and t.scaler is None:
        raise TrainingError(f"step {step}: a backbone gradient is inf or NaN on some rank (the loss is "
                            f"{out.loss:.4f}); stopping before the update so the last checkpoint stays "
                            f"good (lower PFC_LR?)")
    if t.scaler is None or t.scaler.update(overflow):
        t.sgd.rescale_grad = t.rescale / scale
        mod.update()  # Horovod: DistributedOptimizer allreduces the backbone gradients before the update
        head(t.fc.update, out, scheduled(cfg, step, t.bank_lr))
    else:
        t.report.info(f"step {step}: fp16 gradients overflowed on some rank; step skipped on every rank, "
                      f"loss scale now {t.scaler.scale:g}")
    return out


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

    def metrics(self) -> dict:
        """What the step's report adds: fc_s when profiling, nothing otherwise."""
        return {"fc_s": round(self.seconds, 6)} if self.active else {}


def _sampled(fc, out) -> tuple[int, int, int] | None:
    """(rows kept, of them positives, shard rows) of this rank's step, for the report; None without sampling
    (the triplet head has no centers)."""
    sample = getattr(out, "sample", None)
    return None if sample is None else (len(sample.index), sample.positives, fc.count)


def _warn_bad_records(data, cfg: Config, rank: int) -> None:
    """One stderr line whenever more bad records were skipped. Every rank reads its own records, so every
    rank speaks for itself (not only rank 0, which reports everything else)."""
    count = data.unreported_bad_records() if isinstance(data, loader.FaceIter) else 0  # synthetic: never bad
    if count:
        print(f"partial-fc: warning: rank {rank}: {count} bad image record(s) skipped so far in {cfg.data_dir} "
              f"({data.first_bad_text()}); the run stops when more than PFC_MAX_BAD_FRACTION="
              f"{cfg.max_bad_fraction} of the images read are bad", file=sys.stderr, flush=True)


# --- 3. the loop -----------------------------------------------------------------------------------------

def train(cfg: Config) -> list[float]:
    """Train per `cfg` on this rank; returns the global loss of every step run."""
    comm, sync, ctx = init(cfg)
    losses = []
    with contextlib.ExitStack() as cleanup, _collective_failures(comm):
        watchdog = Watchdog(comm, cfg.collective_timeout)
        cleanup.callback(watchdog.close)
        stopper = Preemption(comm)  # SIGTERM / SIGINT: every rank stops at one step boundary, after a save
        stopper.install()
        cleanup.callback(stopper.close)
        # Start-up (indexing a large rec, binding, the parameter broadcast) may keep one rank waiting for another.
        with watchdog.watch("start-up", cfg.slow_timeout, "PFC_SLOW_TIMEOUT"):
            t = setup(cfg, comm, sync, ctx, cleanup)
        for step in range(t.start_step, t.total_steps):
            # The first step also pays for MXNet's lazy initialisation: give it the longer allowance.
            limit = (cfg.slow_timeout, "PFC_SLOW_TIMEOUT") if step == t.start_step else ()
            with watchdog.watch(f"step {step}", *limit):
                signum = stopper.stop_agreed()  # Horovod: collective, so every rank stops at the same step
            if signum:
                with watchdog.watch(f"saving the checkpoint of step {step} on a stop signal", cfg.slow_timeout,
                                    "PFC_SLOW_TIMEOUT"):
                    raise stopper.stop(signum, step, t.start_step, t.checkpointer, cfg.output)
            with watchdog.watch(f"step {step}", *limit, step=True):
                lr = scheduled(cfg, step, t.base_lr)
                head = _HeadTimer(cfg.profile, comm)
                out = train_step(t, step, lr, head)
                losses.append(out.loss)
                t.report.step(step, out.loss, lr, sampled=_sampled(t.fc, out), **head.metrics())
            done = step + 1
            # Both are collective: every rank asks at every step and gets the same answer.
            if t.verification.should_verify(done):
                with watchdog.watch(f"verification after step {done}", cfg.slow_timeout, "PFC_SLOW_TIMEOUT"):
                    t.verification.run(done)
            if t.checkpointer.should_save(done):
                with watchdog.watch(f"saving the checkpoint of step {done}", cfg.slow_timeout, "PFC_SLOW_TIMEOUT"):
                    t.checkpointer.save(done)
        t.report.summary()
    return losses


@contextlib.contextmanager
def _collective_failures(comm):
    """A collective that failed becomes one line naming it, instead of MXNet's traceback."""
    try:
        yield
    except mx.base.MXNetError as e:
        if "horovod" not in str(e).lower():
            raise
        # A peer exited (the launcher stops the others too) or Horovod shut down.
        raise TrainingError(f"rank {comm.rank}: collective '{comm.last_collective}' failed: "
                            f"{_first_line(e)}; another rank has probably died (see its output)") from None


def _first_line(error) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


# --- 4. the command --------------------------------------------------------------------------------------

DESCRIPTION = ("Train per the PFC_* settings (see config.sh and the README). Run one process per worker: "
               "horovodrun -np 2 -H localhost:2 bash config.sh, or bash run.sh. Alone it trains with one worker.")


def add_arguments(parser) -> None:
    parser.add_argument("--test-io", action="store_true",
                        help="only read and decode batches from PFC_DATA_DIR and report images/s (no training)")
    parser.add_argument("--batches", type=positive_int, default=50,
                        help="batches read by --test-io (default: %(default)s)")


def run(args) -> int:
    """`partial-fc train`: the settings come from PFC_*; --test-io only reads and decodes."""
    try:
        return _command(args)
    except Preempted as e:  # rank 0's line speaks for the job; under a launcher every rank ends at once
        return preemption.leave(e, launched=config.launcher_rank() is not None)
    except UserError:
        startup.let_rank_0_speak(config.launcher_rank())  # one line per job for what every rank finds
        raise


def _command(args) -> int:
    cfg = config.load()
    if args.test_io:
        if not cfg.data_dir:
            raise ConfigError("--test-io reads PFC_DATA_DIR, which is not set")
        stats = loader.test_io(loader.open_rec(cfg.data_dir), cfg.batch_size, cfg.data_threads, args.batches)
        print(f"reader: {stats['images_per_s']:.1f} images/s ({args.batches} batches of {cfg.batch_size}, "
              f"{cfg.data_threads} decode thread(s)) from {cfg.data_dir}")
        return 0
    train(cfg)
    return 0
