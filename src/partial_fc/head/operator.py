"""The sharded, sampled FC layer with margin softmax: Partial FC (An et al., arXiv 2010.05222).

One step of the global batch of N = B * W rows (W workers), as named stages (docs/design.md §3 steps 3-8):

    exchange          allgather features [N, D] and labels [N]
    sample            this shard's S centers: every positive, plus uniformly drawn negatives
    cosines           cos [N, S] between the normalised features and the normalised sampled centers
    softmax           margin logits, then the softmax over every rank's columns: allreduce Max, one packed
                      allreduce Sum, and the local gradient dL/dcos (transposed, scaled by 1/|w|)
    feature gradient  dL/dF back through the cosines and the normalisations, reduce-scattered to its ranks
    update            (update()) the center gradient, chunk by chunk, and sparse SGD with momentum on the
                      sampled centers, in the memory bank

The math of each stage lives in sampler / margin / softmax / kernels or here as plain NDArray algebra; every
collective goes through the communicator with a stable name. There is one code path: r = 1.0 only changes
which rows go in.

Scaling: gradients are those of the mean loss over the global batch, L = (1/N) sum_i loss_i. The feature
gradient returned to rank k is dL/df for its own B rows, so the backbone's parameter gradient is the SUM
over ranks of what each rank back-propagates (an averaging allreduce must be compensated by W).

Memory: the sampled rows are handled in row chunks (memory_plan.chunk_rows_for), so that besides the bank
the step holds two [N, S] float32 arrays (the cosines, which the logits and their exp overwrite in place,
and the transposed gradient) and a few chunk-sized ones. A float32 device bank gathers its sampled rows
once per step into one float32 [S, D] copy (the shard itself at r = 1.0) that the three passes share; a
compact (float16 / bfloat16) or host bank with several chunks gathers each again for the feature gradient
and for the update, so it never holds an [S, D] float32 copy (at 10 M classes on 2 ranks, S = 500 k rows of
512: 1 GB). Those arrays pass from one step to the next (buffers.py).

Benchmarks time the stages by setting `clock` (see bench/fc.py): its phase(name) is a context manager
around each timed piece of work; with no clock nothing waits.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import mxnet as mx
import numpy as np

from . import kernels, softmax
from .buffers import Alternating, BufferPool, StepBuffers
from .margin import Margin, mark_targets
from .memory_bank import MemoryBank
from .memory_plan import chunk_rows_for
from .sampler import CenterSampler, Sample
from .sharding import shard_range


@dataclass
class _Work:
    """What one step carries from its forward_backward to its update."""
    sample: Sample
    chunks: list                    # [(lo, hi)] row ranges of the sample
    buffers: StepBuffers            # handed back to the pool once update() applied the step
    kept: mx.nd.NDArray | None      # float32 [S, D] sampled centers kept for the whole step, or None:
                                    # gathered from the bank chunk by chunk in each pass
    Fh: mx.nd.NDArray | None = None       # [N, D] normalised features
    w_inv: mx.nd.NDArray | None = None    # [S] 1 / |w| of the sampled centers (from the gather, or _cosines)
    dcos_t: mx.nd.NDArray | None = None   # [S, N] dL/dcos scaled by 1/|w|, transposed: a chunk is a row block


@dataclass
class FCStep:
    """What one forward/backward of the head produced on this rank.

    loss:         mean cross-entropy over the global batch (the same number on every rank)
    feature_grad: float32 [B, D], dL/df for this rank's own rows
    sample:       the centers this rank used (Sample.index into its shard)
    center_grad:  float32 [S, D], dL/dw for those centers (a property, formed on first use; only before
                  update(), which forms and applies it chunk by chunk)
    """
    loss: float
    feature_grad: mx.nd.NDArray
    sample: Sample
    _op: "PartialFC" = field(default=None, repr=False)
    _work: _Work | None = field(default=None, repr=False)
    _center_grad: mx.nd.NDArray | None = field(default=None, repr=False)

    @property
    def center_grad(self) -> mx.nd.NDArray:
        if self._center_grad is None:
            if self._work is None:
                raise RuntimeError("the center gradient of a step is gone once update() applied it; read "
                                   "center_grad before update()")
            self._center_grad = self._op.center_grad(self)
        return self._center_grad


class PartialFC:
    def __init__(self, comm, num_classes: int, embedding_size: int, margin: Margin, sample_rate: float = 1.0,
                 *, bank: MemoryBank | None = None, seed: int = 0, ctx=None, storage: str = "device",
                 momentum: float = 0.9, wd: float = 5e-4, bank_dtype: str | None = None,
                 chunk_rows: int | None = None):
        """comm: the communicator (dist.py); this rank's classes are shard_range(num_classes, comm.size,
        comm.rank). bank: this rank's centers (default: a fresh bank from `seed`, with `storage`, `momentum`,
        `wd` and `bank_dtype`, "float32" by default; a given bank must match bank_dtype when it is set).
        chunk_rows: force the row chunk (tests); default memory_plan.chunk_rows_for()."""
        self.comm = comm
        self.num_classes, self.embedding_size = num_classes, embedding_size
        self.margin = margin
        self.ctx = ctx or mx.cpu()
        self.start, self.count = shard_range(num_classes, comm.size, comm.rank)
        self.sampler = CenterSampler(self.start, self.count, num_classes, sample_rate, seed=seed, rank=comm.rank)
        if bank is None:
            bank = MemoryBank.create(self.count, embedding_size, seed=seed, rank=comm.rank, ctx=self.ctx,
                                     storage=storage, momentum=momentum, wd=wd, dtype=bank_dtype or "float32")
        if bank.shape != (self.count, embedding_size):
            raise ValueError(f"memory bank holds {bank.shape}, rank {comm.rank} needs ({self.count}, {embedding_size})")
        if bank_dtype is not None and bank.dtype != bank_dtype:
            raise ValueError(f"memory bank stores {bank.dtype}, but bank_dtype={bank_dtype!r} was asked for")
        if chunk_rows is not None and chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.bank = bank
        self.chunk_rows = chunk_rows
        self.clock = None  # a benchmark's phase clock; None: no timing, no waits
        self._pool = BufferPool(self.ctx)

    # --- one step -------------------------------------------------------------------------------------

    def forward_backward(self, features: mx.nd.NDArray, labels, step: int) -> FCStep:
        """features: float32 [B, D] of this rank; labels: int64 [B] class ids in [0, C)."""
        labels = self._checked_labels(features, labels)
        F, Y = self._exchange(features, labels)                    # [N, D], [N]: the global batch
        N = F.shape[0]
        with self._phase("sample"):
            sample = self.sampler.sample(Y, step)
        with self._phase("normalise"):
            f_norm = mx.nd.norm(F, axis=1, keepdims=True)          # [N, 1]
            Fh = mx.nd.broadcast_div(F, f_norm)
        work = self._begin(N, sample)
        work.Fh = Fh
        cos, work.w_inv = self._cosines(Fh, work)                  # [N, S], [S]
        loss, work.dcos_t = self._distributed_softmax(cos, work, N)  # [S, N]: dL/dcos, transposed, / |w|
        dF = self._feature_grad(work, f_norm)                      # [N, D]: this shard's part, every row
        with self._phase("scatter"):
            # Horovod: each rank's classes contribute to every row; sum them and keep our own B rows.
            dF_local = self.comm.reducescatter(dF, "pfc.feature_grad")
        return FCStep(loss=float(loss), feature_grad=dF_local, sample=sample, _op=self, _work=work)

    def update(self, out: FCStep, lr: float) -> None:
        """Apply the center gradient of `out` to the sampled rows of the memory bank, chunk by chunk.

        Each chunk's gradient dcos_t . Fh [rows, D] is formed just before the bank applies it, so a step of
        many chunks never holds the whole [S, D] gradient; the bank projects it onto the tangent of the
        center's sphere (docs/design.md §3 step 8) as it updates the rows."""
        work = out._work
        if work is None:
            raise RuntimeError("this step's center gradient was already applied")
        D = self.embedding_size
        grads = Alternating((work.chunks[0][1], D), self.ctx)
        for lo, hi in work.chunks:
            w = self._centers(work, lo, hi)
            with self._phase("matmul"):
                g = mx.nd.dot(work.dcos_t[lo:hi], work.Fh, out=grads.take((hi - lo, D)))
            with self._phase("update"):
                # w (a float32 copy of the rows, or a view of a float32 shard) is the update's input, so the
                # bank does not gather the rows a second time; the update may overwrite it.
                self.bank.update_rows(work.sample, lo, hi, g, lr, rows=w, project=True)
        out._work = None
        self._pool.give_back(work.buffers)  # the next step reuses them

    def center_grad(self, out: FCStep) -> mx.nd.NDArray:
        """The whole float32 [S, D] center gradient of `out` (FCStep.center_grad); materialises [S, D]."""
        work = out._work
        parts = [self._center_grad_rows(work, lo, hi, self._centers(work, lo, hi)) for lo, hi in work.chunks]
        return parts[0] if len(parts) == 1 else mx.nd.concat(*parts, dim=0)

    # --- the stages -----------------------------------------------------------------------------------

    def _exchange(self, features, labels: np.ndarray):
        """Horovod: every rank needs every feature and label of the global batch."""
        B = features.shape[0]
        with self._phase("exchange"):
            F = self.comm.allgather(features.as_in_context(self.ctx), "pfc.features")
            Y = self.comm.allgather(mx.nd.array(labels, dtype=np.int64), "pfc.labels").asnumpy()
        if F.shape[0] != B * self.comm.size:
            raise ValueError(f"batch sizes differ between ranks: this rank has {B} rows, the world {F.shape[0]} "
                             f"(expected {B} x {self.comm.size}); every rank must use the same batch size")
        return F, Y

    def _cosines(self, Fh, work: _Work):
        """cos [N, S] between the normalised features and the sampled centers, and 1/|w| [S] of the centers.

        The product is taken with the centers as stored and then scaled by 1/|w| per column: one [N, S] pass
        instead of normalising the [S, D] centers."""
        N, S = Fh.shape[0], work.sample.index.size
        cos = work.buffers.cos
        have_norms = work.w_inv is not None  # computed by the gather
        w_inv = work.w_inv if have_norms else mx.nd.empty((S,), ctx=self.ctx)
        # All rows at hand (kept, or one chunk): one product straight into cos, as fast as a plain matmul.
        # Otherwise a product per chunk, copied into its columns.
        products = Alternating((N, work.chunks[0][1]), self.ctx) if work.kept is None and len(work.chunks) > 1 \
            else None
        for lo, hi in work.chunks:
            w = self._centers(work, lo, hi)
            if not have_norms:
                with self._phase("normalise"):
                    kernels.inv_row_norms(w, out=w_inv[lo:hi])
            if products is not None:
                with self._phase("matmul"):
                    cos[:, lo:hi] = mx.nd.dot(Fh, w, transpose_b=True, out=products.take((N, hi - lo)))
        if products is None:
            # One chunk that was gathered: keep it for the feature gradient and the update too.
            work.kept = w if work.kept is None else work.kept
            with self._phase("matmul"):
                mx.nd.dot(Fh, work.kept, transpose_b=True, out=cos)
        with self._phase("normalise"):
            kernels.scale_columns(cos, w_inv)
        return cos, w_inv

    def _distributed_softmax(self, cos, work: _Work, N: int):
        """Mean margin softmax cross-entropy over every rank's columns, and dL/dcos, transposed and scaled by
        1/|w| per center: [S, N] (what the feature and center gradients multiply).

        The two collectives sit between local pieces of math (softmax.py). The logits are s * cos with the
        targets' margins written into cos (mark_targets); from there the [N, S] work runs in place in cos's
        buffer, and the gradient is written transposed into the step's second [N, S] buffer."""
        s, S = self.margin.s, cos.shape[1]
        with self._phase("softmax"):
            cache = mark_targets(cos, work.sample.labels, self.margin)
            local_max = softmax.row_max(cos) * s
        with self._phase("exchange"):
            M = self.comm.allreduce(local_max, "max", "pfc.logits_max")            # Horovod: global row max
        with self._phase("softmax"):
            e = cos
            local = softmax.pack(softmax.exp_and_row_sums(e, s, M), cache.target_logit)
        with self._phase("exchange"):
            packed = self.comm.allreduce(local, "sum", "pfc.sum_exp_target")      # Horovod: one packed sum
            loss = softmax.loss_per_row(packed, M).mean().asscalar()
        with self._phase("softmax"):
            dcos_t = softmax.cosine_grad_t(e, packed, 1.0 / N, s, work.w_inv, cache.targets, cache.slope,
                                           out=work.buffers.work.reshape((S, N)))
        return loss, dcos_t

    def _feature_grad(self, work: _Work, f_norm):
        """dL/dF [N, D] of this shard's columns: back through the cosines, then the feature normalisation."""
        N, D = work.Fh.shape
        if work.kept is not None:
            with self._phase("matmul"):
                dFh = mx.nd.dot(work.dcos_t, work.kept, transpose_a=True)        # one product
        else:
            dFh = mx.nd.zeros((N, D), ctx=self.ctx)
            parts = Alternating((N, D), self.ctx)
            for lo, hi in work.chunks:
                w = self._centers(work, lo, hi)
                with self._phase("matmul"):
                    dFh += mx.nd.dot(work.dcos_t[lo:hi], w, transpose_a=True, out=parts.take((N, D)))
        with self._phase("normalise"):
            Fh = work.Fh
            return mx.nd.broadcast_div(dFh - mx.nd.broadcast_mul(Fh, mx.nd.sum(Fh * dFh, axis=1, keepdims=True)),
                                       f_norm)

    def _center_grad_rows(self, work: _Work, lo: int, hi: int, w) -> mx.nd.NDArray:
        """dL/dw of sampled rows [lo, hi) (float32 [hi - lo, D]) given those rows' centers w."""
        with self._phase("matmul"):
            g = mx.nd.dot(work.dcos_t[lo:hi], work.Fh)
        with self._phase("normalise"):
            return kernels.tangent(g, w)

    # --- helpers --------------------------------------------------------------------------------------

    def _checked_labels(self, features, labels) -> np.ndarray:
        if features.ndim != 2 or features.shape[1] != self.embedding_size:
            raise ValueError(f"features must be [B, {self.embedding_size}], got {features.shape}")
        labels = np.asarray(labels.asnumpy() if isinstance(labels, mx.nd.NDArray) else labels)
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be int64 class ids, got {labels.dtype} (floats lose ids above 2^24)")
        if labels.shape != (features.shape[0],):
            # The range of the ids is checked after the allgather, so that every rank raises together.
            raise ValueError(f"{features.shape[0]} features but labels of shape {labels.shape}")
        return labels.astype(np.int64)

    def _chunks(self, sampled: int) -> list[tuple[int, int]]:
        rows = self.chunk_rows or chunk_rows_for(self.embedding_size, self.bank.dtype, sampled)
        return [(lo, min(lo + rows, sampled)) for lo in range(0, sampled, rows)]

    def _begin(self, N: int, sample: Sample) -> _Work:
        """The step's chunks and buffers; a float32 device bank gathers the sampled rows once, here."""
        S, D = sample.index.size, self.embedding_size
        chunks = self._chunks(S)
        keep = self.bank.dtype == "float32" and self.bank.storage == "device"
        buffers = self._pool.take(N, S, D, keep and not sample.full)
        kept = w_inv = None
        if keep:
            # A sampled gather reads every row anyway: it gives their 1 / |w| too (the shard's, at r = 1.0,
            # come from a pass of their own in _cosines).
            w_inv = None if sample.full else mx.nd.empty((S,), ctx=self.ctx)
            with self._phase("gather"):
                kept = self.bank.gather(sample, out=buffers.kept, inv_norms=w_inv)  # [S, D] (the shard when full)
        return _Work(sample, chunks, buffers, kept, w_inv=w_inv)

    def _centers(self, work: _Work, lo: int, hi: int) -> mx.nd.NDArray:
        """Float32 centers of the sampled rows [lo, hi): a view of the kept rows, or a fresh gather."""
        if work.kept is not None:
            return work.kept if (lo, hi) == (0, work.kept.shape[0]) else work.kept[lo:hi]
        with self._phase("gather"):
            return self.bank.gather_rows(work.sample, lo, hi)

    def _phase(self, name: str):
        """A timed phase of the step for the benchmarks' clock: exchange, sample, gather, normalise, matmul,
        softmax, scatter or update (names repeat; the clock adds them up)."""
        return contextlib.nullcontext() if self.clock is None else self.clock.phase(name)
