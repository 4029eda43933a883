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
"""
from __future__ import annotations

from dataclasses import dataclass

import mxnet as mx
import numpy as np

from . import softmax
from .margin import Margin, margin_backward, margin_logits
from .memory_bank import MemoryBank
from .sampler import CenterSampler, Sample
from .sharding import shard_range


@dataclass
class FCStep:
    """What one forward/backward of the head produced on this rank.

    loss:         mean cross-entropy over the global batch (the same number on every rank)
    feature_grad: float32 [B, D], dL/df for this rank's own rows
    sample:       the centers this rank used (Sample.index into its shard)
    center_grad:  float32 [S, D], dL/dW for those centers
    """
    loss: float
    feature_grad: mx.nd.NDArray
    sample: Sample
    center_grad: mx.nd.NDArray


class PartialFC:
    def __init__(self, comm, num_classes: int, embedding_size: int, margin: Margin, sample_rate: float = 1.0,
                 *, bank: MemoryBank | None = None, seed: int = 0, ctx=None, storage: str = "device",
                 momentum: float = 0.9, wd: float = 5e-4):
        self.comm = comm
        self.num_classes, self.embedding_size = num_classes, embedding_size
        self.margin = margin
        self.ctx = ctx or mx.cpu()
        self.start, self.count = shard_range(num_classes, comm.size, comm.rank)
        self.sampler = CenterSampler(self.start, self.count, num_classes, sample_rate, seed=seed, rank=comm.rank)
        if bank is None:
            bank = MemoryBank.create(self.count, embedding_size, seed=seed, rank=comm.rank, ctx=self.ctx,
                                     storage=storage, lr_momentum=momentum, wd=wd)
        if bank.shape != (self.count, embedding_size):
            raise ValueError(f"memory bank holds {bank.shape}, rank {comm.rank} needs ({self.count}, {embedding_size})")
        self.bank = bank

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

        sample = self.sampler.sample(Y, step)
        W = self.bank.gather(sample)                                      # [S, D] raw centers
        y = mx.nd.array(sample.labels, ctx=self.ctx, dtype=np.int64)

        f_norm = mx.nd.norm(F, axis=1, keepdims=True)                    # [N, 1]
        Fh = mx.nd.broadcast_div(F, f_norm)
        w_inv = 1.0 / mx.nd.norm(W, axis=1)                               # [S]
        # Scale the [N, S] product by 1/|w| instead of normalising the [S, D] centers: one pass fewer.
        cos = mx.nd.broadcast_mul(mx.nd.dot(Fh, W, transpose_b=True), w_inv.expand_dims(0))
        z, cache = margin_logits(cos, y, self.margin)

        # Horovod: global row max, then row sums and target logits in one packed reduction.
        M = comm.allreduce(softmax.row_max(z), "max", "pfc.logits_max")
        e = softmax.shifted_exp(z, M)
        packed = comm.allreduce(softmax.sum_exp_and_target(e, z, cache.onehot), "sum", "pfc.sum_exp_target")
        loss = softmax.loss_per_row(packed, M).mean().asscalar()

        dz = softmax.logits_grad(e, packed, cache.onehot, 1.0 / N)
        dcos = margin_backward(dz, cache, self.margin)
        dcos_w = mx.nd.broadcast_mul(dcos, w_inv.expand_dims(0))          # dcos / |w|
        # d/dW of cos = f^.w/|w|: (dW^ - w^ <w^, dW^>)/|w|, where <w^, dW^>_s = sum_n dcos_ns cos_ns.
        radial = mx.nd.sum(dcos * cos, axis=0) * w_inv * w_inv            # [S]
        dW = mx.nd.dot(dcos_w, Fh, transpose_a=True) - mx.nd.broadcast_mul(W, radial.expand_dims(1))
        dFh = mx.nd.dot(dcos_w, W)                                        # [N, D]
        dF = mx.nd.broadcast_div(dFh - mx.nd.broadcast_mul(Fh, mx.nd.sum(Fh * dFh, axis=1, keepdims=True)), f_norm)

        # Horovod: each rank's classes contribute to every row; sum them and keep our own B rows.
        dF_local = comm.reducescatter(dF, "pfc.feature_grad")
        return FCStep(loss=float(loss), feature_grad=dF_local, sample=sample, center_grad=dW)

    def update(self, out: FCStep, lr: float) -> None:
        """Apply the center gradient of `out` to the sampled rows of the memory bank."""
        self.bank.update(out.sample, out.center_grad, lr)
