"""The sharded, sampled FC layer with margin softmax: Partial FC (An et al., arXiv 2010.05222).

One step, for the global batch of N = B * W rows (DESIGN §3 steps 3-8):
    allgather features and labels -> sample this shard's centers -> cosines -> margin logits
    -> distributed softmax (allreduce Max, then one packed allreduce Sum) -> local gradients
    -> reduce-scatter feature gradients -> sparse SGD on the sampled centers.
All math lives in sampler / margin / softmax and here as plain NDArray algebra; every collective goes
through the communicator with a stable name. There is one code path: r = 1.0 only changes which rows go in.

Scaling: gradients are those of the mean loss over the global batch, L = (1/N) sum_i loss_i. The feature
gradient returned to rank k is dL/df for its own B rows, so the backbone's parameter gradient is the SUM
over ranks of what each rank back-propagates (an averaging allreduce must be compensated by W).

Memory and speed: the sampled rows are handled in row chunks, so that besides the bank the step holds two
[N, S] float32 arrays (cosines, and one buffer that the logits, their exp and gradients overwrite in place)
and a few chunk-sized ones. A float32 device bank gathers its sampled rows once per step as one float32
[S, D] copy (a view of the shard at r = 1.0) that the three passes share; a compact (float16 / bfloat16) or
host bank with several chunks gathers each again for the feature gradient and for the update, so it never holds
an [S, D] float32 copy (at 10 M classes on 2 ranks, S = 500 k rows of 512: 1 GB). The [N, S] arrays and
the [S, D] copy pass from one step to the next once update() has applied a step (fresh ones would cost their
page faults every step). Chunk loops write into buffers allocated once per step and wait for a buffer's
previous chunk before reusing it: MXNet runs asynchronously, and a loop that queued all of its hundreds of
chunks at once would allocate every chunk's fresh arrays up front.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import mxnet as mx
import numpy as np

from . import softmax
from .margin import Margin, margin_backward, margin_logits
from .memory_bank import MemoryBank
from .memory_plan import chunk_rows_for
from .sampler import CenterSampler, Sample
from .sharding import shard_range

class _Alternating:
    """Two float32 buffers that a chunk loop uses in turn. Taking one waits until MXNet has finished the write
    queued into it two chunks ago, so Python runs at most two chunks ahead of the engine."""

    def __init__(self, shape: tuple[int, int], ctx):
        self.size = shape[0] * shape[1]
        self.flat = [mx.nd.empty((self.size,), ctx=ctx) for _ in range(2)]
        self.turn = 0

    def take(self, shape: tuple[int, int]) -> mx.nd.NDArray:
        buf = self.flat[self.turn]
        self.turn ^= 1
        buf.wait_to_read()
        return buf[:shape[0] * shape[1]].reshape(shape)


@dataclass
class _Backward:
    """What update() needs from forward_backward: the gradient w.r.t. the sampled centers is
    dW = dcos_t . Fh - W * radial, formed chunk by chunk when it is applied."""
    chunks: list            # [(lo, hi)] row ranges of the sample
    Fh: mx.nd.NDArray       # [N, D] normalised features
    dcos_t: mx.nd.NDArray   # [S, N] dL/dcos scaled by 1/|w|, transposed: a chunk of sampled rows is a row block
    radial: mx.nd.NDArray   # [S] sum_n dcos_ns cos_ns / |w_s|^2
    weight: mx.nd.NDArray | None  # float32 [S, D] centers kept from the forward (float32 device bank, or one chunk)
    scratch: mx.nd.NDArray  # float32 [chunk rows, D] for the elementwise work on a chunk of centers
    buffers: "_StepBuffers"  # handed back to the operator for the next step once update() applied this one


@dataclass
class _StepBuffers:
    """The large per-step arrays, reused from one step to the next. A fresh array of hundreds of MB costs its
    page faults on every step (on this project's CPU machines about as much as the pass that fills it)."""
    key: tuple              # (N, S, D, kept): what the arrays were made for
    cos: mx.nd.NDArray      # [N, S] cosines; later dcos_t (as [S, N]) and scratch for the radial term
    work: mx.nd.NDArray     # [N, S] logits, then exp, dz and dcos, in place
    kept: mx.nd.NDArray | None  # [S, D] gathered float32 centers (float32 device bank, sample not full)


@dataclass
class FCStep:
    """What one forward/backward of the head produced on this rank.

    loss:         mean cross-entropy over the global batch (the same number on every rank)
    feature_grad: float32 [B, D], dL/df for this rank's own rows
    sample:       the centers this rank used (Sample.index into its shard)
    center_grad:  float32 [S, D], dL/dW for those centers (a property: formed on first use; when the step
                  ran in chunks it is only available before update(), which applies it chunk by chunk)
    """
    loss: float
    feature_grad: mx.nd.NDArray
    sample: Sample
    _op: "PartialFC" = field(default=None, repr=False)
    _backward: _Backward | None = field(default=None, repr=False)
    _center_grad: mx.nd.NDArray | None = field(default=None, repr=False)

    @property
    def center_grad(self) -> mx.nd.NDArray:
        if self._center_grad is None:
            if self._backward is None:
                raise RuntimeError("the center gradient of a step run in chunks is gone once update() applied "
                                   "it; read center_grad before update()")
            self._center_grad = self._op.center_grad(self)
        return self._center_grad


class PartialFC:
    def __init__(self, comm, num_classes: int, embedding_size: int, margin: Margin, sample_rate: float = 1.0,
                 *, bank: MemoryBank | None = None, seed: int = 0, ctx=None, storage: str = "device",
                 momentum: float = 0.9, wd: float = 5e-4, bank_dtype: str | None = None,
                 chunk_rows: int | None = None):
        """bank_dtype: storage dtype of a bank created here ("float32" default, "float16", "bfloat16"); with
        a given `bank` it must match that bank's. chunk_rows: force the row chunk (tests); default
        chunk_rows_for(). phase_hook: see _phase."""
        self.comm = comm
        self.num_classes, self.embedding_size = num_classes, embedding_size
        self.margin = margin
        self.ctx = ctx or mx.cpu()
        self.start, self.count = shard_range(num_classes, comm.size, comm.rank)
        self.sampler = CenterSampler(self.start, self.count, num_classes, sample_rate, seed=seed, rank=comm.rank)
        if bank is None:
            bank = MemoryBank.create(self.count, embedding_size, seed=seed, rank=comm.rank, ctx=self.ctx,
                                     storage=storage, lr_momentum=momentum, wd=wd, dtype=bank_dtype or "float32")
        if bank.shape != (self.count, embedding_size):
            raise ValueError(f"memory bank holds {bank.shape}, rank {comm.rank} needs ({self.count}, {embedding_size})")
        if bank_dtype is not None and bank.dtype != bank_dtype:
            raise ValueError(f"memory bank stores {bank.dtype}, but bank_dtype={bank_dtype!r} was asked for")
        if chunk_rows is not None and chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.bank = bank
        self.chunk_rows = chunk_rows
        # Called as phase_hook(name) at the end of each phase (benchmarks time the phases with it and call
        # mx.nd.waitall() there). None: no calls, no waits.
        self.phase_hook = None
        self._ones_cache: dict[tuple[int, int], mx.nd.NDArray] = {}
        self._buffers: _StepBuffers | None = None  # see _take_buffers

    def _phase(self, name: str) -> None:
        """End of a phase: exchange, sample, gather, normalise, matmul, softmax, scatter or update (names repeat)."""
        if self.phase_hook is not None:
            self.phase_hook(name)

    def _chunks(self, sampled: int) -> list[tuple[int, int]]:
        rows = self.chunk_rows or chunk_rows_for(self.embedding_size, self.bank.dtype, sampled)
        return [(lo, min(lo + rows, sampled)) for lo in range(0, sampled, rows)]

    def forward_backward(self, features: mx.nd.NDArray, labels, step: int) -> FCStep:
        """features: float32 [B, D] of this rank; labels: int64 [B] class ids in [0, C)."""
        comm, B = self.comm, features.shape[0]
        if features.ndim != 2 or features.shape[1] != self.embedding_size:
            raise ValueError(f"features must be [B, {self.embedding_size}], got {features.shape}")
        labels = np.asarray(labels.asnumpy() if isinstance(labels, mx.nd.NDArray) else labels)
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be int64 class ids, got {labels.dtype} (floats lose ids above 2^24)")
        if labels.shape != (B,):
            # The range of the ids is checked after the allgather, so that every rank raises together.
            raise ValueError(f"{B} features but labels of shape {labels.shape}")

        # Horovod: every rank needs every feature and label of the global batch.
        F = comm.allgather(features.as_in_context(self.ctx), "pfc.features")
        Y = comm.allgather(mx.nd.array(labels.astype(np.int64), dtype=np.int64), "pfc.labels").asnumpy()
        N = F.shape[0]
        if N != B * comm.size:
            raise ValueError(f"batch sizes differ between ranks: this rank has {B} rows, the world {N} "
                             f"(expected {B} x {comm.size}); every rank must use the same batch size")
        self._phase("exchange")

        sample = self.sampler.sample(Y, step)
        S = sample.index.size
        chunks = self._chunks(S)
        self._phase("sample")

        f_norm = mx.nd.norm(F, axis=1, keepdims=True)                    # [N, 1]
        Fh = mx.nd.broadcast_div(F, f_norm)
        self._phase("softmax")
        D, rows = self.embedding_size, chunks[0][1]
        keep = self.bank.dtype == "float32" and self.bank.storage == "device"
        buffers = self._take_buffers(N, S, D, keep and not sample.full)
        kept = None
        if keep:
            kept = self.bank.gather(sample, out=buffers.kept)            # [S, D] float32 (the shard when full)
            self._phase("gather")
        scratch = mx.nd.empty((rows, D), ctx=self.ctx)
        sq_norm = mx.nd.empty((S, 1), ctx=self.ctx)                      # |w|^2 of the sampled centers
        cos = buffers.cos
        products = _Alternating((N, rows), self.ctx) if kept is None and len(chunks) > 1 else None
        for lo, hi in chunks:
            W = self._centers(sample, lo, hi, kept)
            # |w|^2 as a product of the squares with a ones vector: MXNet's row reductions (norm, sum over an
            # axis) run several times slower than its BLAS on CPU.
            mx.nd.dot(mx.nd.square(W, out=scratch[:hi - lo]), self._ones(D, 1), out=sq_norm[lo:hi])
            self._phase("normalise")
            if products is not None:
                cos[:, lo:hi] = mx.nd.dot(Fh, W, transpose_b=True, out=products.take((N, hi - lo)))
                self._phase("matmul")
        if products is None:
            # All rows at hand (kept, or a single chunk, which is then kept for dF and the update): one product
            # straight into cos, as fast as a plain matmul; chunk products would have to be copied into its columns.
            kept = W if kept is None else kept
            mx.nd.dot(Fh, kept, transpose_b=True, out=cos)
            self._phase("matmul")
        del W, products
        w_inv = mx.nd.rsqrt(sq_norm).reshape((S,))                       # [S]
        # Scale the [N, S] product by 1/|w| instead of normalising the [S, D] centers: one pass fewer.
        mx.nd.broadcast_mul(cos, w_inv.expand_dims(0), out=cos)
        self._phase("normalise")
        z, cache = margin_logits(cos, sample.labels, self.margin, out=buffers.work)  # cos is kept for the radial term
        local_max = softmax.row_max(z)
        self._phase("softmax")

        # Horovod: global row max, then row sums and target logits in one packed reduction.
        M = comm.allreduce(local_max, "max", "pfc.logits_max")
        self._phase("exchange")
        # From here on the [N, S] work runs in place in z's buffer (exp, its gradient, dcos).
        e = softmax.shifted_exp(z, M, out=z)
        del z
        local = softmax.sum_exp_and_target(e, cache.target_logit)
        self._phase("softmax")
        packed = comm.allreduce(local, "sum", "pfc.sum_exp_target")
        loss = softmax.loss_per_row(packed, M).mean().asscalar()
        self._phase("exchange")

        dz = softmax.logits_grad(e, packed, cache.targets, 1.0 / N, out=e)
        del e
        dcos = margin_backward(dz, cache, self.margin, out=dz)
        del dz, cache
        # d/dW of cos = f^.w/|w|: (dW^ - w^ <w^, dW^>)/|w|, where <w^, dW^>_s = sum_n dcos_ns cos_ns: a column
        # sum, done as a product with a ones row (cos is not needed afterwards and holds the elementwise product).
        radial = mx.nd.dot(self._ones(1, N), mx.nd.elemwise_mul(dcos, cos, out=cos)).reshape((S,)) * w_inv * w_inv
        # dcos / |w| as [S, N], in cos's buffer: the chunks' products then read contiguous row blocks of it (no
        # column copies), and dW = dcos_t . Fh is a plain product.
        dcos_t = mx.nd.transpose(dcos, out=cos.reshape((S, N)))
        del dcos, cos
        mx.nd.broadcast_mul(dcos_t, w_inv.expand_dims(1), out=dcos_t)
        self._phase("softmax")
        if kept is not None:
            dFh = mx.nd.dot(dcos_t, kept, transpose_a=True)                # [N, D], one product
            self._phase("matmul")
        else:
            dFh = mx.nd.zeros((N, D), ctx=self.ctx)
            parts = _Alternating((N, D), self.ctx)
            for lo, hi in chunks:
                W = self._centers(sample, lo, hi, None)
                dFh += mx.nd.dot(dcos_t[lo:hi], W, transpose_a=True, out=parts.take((N, D)))
                self._phase("matmul")
            del W, parts
        dF = mx.nd.broadcast_div(dFh - mx.nd.broadcast_mul(Fh, mx.nd.sum(Fh * dFh, axis=1, keepdims=True)), f_norm)
        self._phase("softmax")

        # Horovod: each rank's classes contribute to every row; sum them and keep our own B rows.
        dF_local = comm.reducescatter(dF, "pfc.feature_grad")
        self._phase("scatter")
        return FCStep(loss=float(loss), feature_grad=dF_local, sample=sample, _op=self,
                      _backward=_Backward(chunks, Fh, dcos_t, radial, kept, scratch, buffers))

    def _take_buffers(self, N: int, S: int, D: int, kept: bool) -> _StepBuffers:
        """The previous step's buffers when update() gave them back and the shapes match, else new ones (a step
        whose update never ran keeps its own, so two outstanding steps never share one)."""
        key = (N, S, D, kept)
        buffers, self._buffers = self._buffers, None
        if buffers is None or buffers.key != key:
            buffers = None  # let the old arrays go before the new ones are made
            buffers = _StepBuffers(key, mx.nd.empty((N, S), ctx=self.ctx), mx.nd.empty((N, S), ctx=self.ctx),
                                   mx.nd.empty((S, D), ctx=self.ctx) if kept else None)
        return buffers

    def _centers(self, sample, lo: int, hi: int, kept: mx.nd.NDArray | None) -> mx.nd.NDArray:
        """Float32 centers of the sampled rows [lo, hi): a view of the rows kept from the forward pass, or a
        fresh gather from the bank (phase "gather")."""
        if kept is not None:
            return kept if (lo, hi) == (0, kept.shape[0]) else kept[lo:hi]
        W = self.bank.gather_rows(sample, lo, hi)
        self._phase("gather")
        return W

    def _ones(self, rows: int, cols: int) -> mx.nd.NDArray:
        """A float32 array of ones on the compute context, kept between steps (shapes vary with N and D)."""
        key = (rows, cols)
        if key not in self._ones_cache:
            self._ones_cache[key] = mx.nd.ones(key, ctx=self.ctx)
        return self._ones_cache[key]

    def _center_grad_rows(self, b: _Backward, lo: int, hi: int, W: mx.nd.NDArray,
                          out: mx.nd.NDArray | None = None) -> mx.nd.NDArray:
        """dL/dW of sampled rows [lo, hi) (float32 [hi - lo, D]) given those rows' centers W; written into
        `out` when given."""
        dW = mx.nd.dot(b.dcos_t[lo:hi], b.Fh, out=out)
        self._phase("matmul")
        # The tangent projection: dW -= W * radial, through the chunk scratch (no fresh [rows, D] array).
        dW -= mx.nd.broadcast_mul(W, b.radial[lo:hi].expand_dims(1), out=b.scratch[:hi - lo])
        self._phase("normalise")
        return dW

    def center_grad(self, out: FCStep) -> mx.nd.NDArray:
        """The whole float32 [S, D] center gradient of `out` (FCStep.center_grad); materialises [S, D]."""
        b = out._backward
        parts = [self._center_grad_rows(b, lo, hi, self._centers(out.sample, lo, hi, b.weight))
                 for lo, hi in b.chunks]
        return parts[0] if len(parts) == 1 else mx.nd.concat(*parts, dim=0)

    def update(self, out: FCStep, lr: float) -> None:
        """Apply the center gradient of `out` to the sampled rows of the memory bank, chunk by chunk."""
        b = out._backward
        if b is None:
            raise RuntimeError("this step's center gradient was already applied")
        grads = _Alternating(b.scratch.shape, self.ctx) if len(b.chunks) > 1 else None
        for lo, hi in b.chunks:
            W = self._centers(out.sample, lo, hi, b.weight)
            if grads is None:
                dW = out.center_grad  # one chunk: formed once and kept, tests and callers may read it afterwards
            else:
                dW = self._center_grad_rows(b, lo, hi, W, out=grads.take((hi - lo, b.scratch.shape[1])))
            # W (a float32 copy of the rows, or a view of a float32 shard) is the update's input, so the bank
            # does not gather the rows a second time; the update overwrites it.
            self.bank.update_rows(out.sample, lo, hi, dW, lr, rows=W)
            self._phase("update")
        out._backward = None
        self._buffers = b.buffers  # the next step reuses them
