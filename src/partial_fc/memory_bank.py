"""One rank's shard of class centers and their momentum (DESIGN §3 step 8).

Only the rows sampled in a step are read, updated and written back (sparse SGD with momentum and
weight decay, the same update rule as MXNet's sgd_mom_update); rows not sampled keep both their weight
and their momentum untouched. Centers are never allreduced: each rank owns its rows outright.

Storage "device" keeps both arrays as NDArrays on the compute context; "host" keeps them as numpy arrays
in host memory (for GPU runs whose shard does not fit next to the backbone) and moves only sampled rows.
"""
from __future__ import annotations

import mxnet as mx
import numpy as np

from .sampler import Sample

STORAGES = ("device", "host")


class MemoryBank:
    def __init__(self, weight: np.ndarray, momentum: np.ndarray | None = None, *, ctx=None,
                 storage: str = "device", lr_momentum: float = 0.9, wd: float = 5e-4, copy: bool = True):
        """weight/momentum: float32 [count, D]. With copy=False a host bank adopts the arrays (no second
        copy of a multi-GB shard); by default it copies, so the caller's arrays are never updated."""
        if storage not in STORAGES:
            raise ValueError(f"unknown memory bank storage {storage!r} (known: {', '.join(STORAGES)})")
        weight = np.array(weight, dtype=np.float32, copy=copy)
        if weight.ndim != 2:
            raise ValueError(f"centers must be [count, dim], got shape {weight.shape}")
        momentum = np.zeros_like(weight) if momentum is None else np.array(momentum, dtype=np.float32, copy=copy)
        if momentum.shape != weight.shape:
            raise ValueError(f"momentum shape {momentum.shape} differs from centers {weight.shape}")
        self.ctx = ctx or mx.cpu()
        self.storage = storage
        self.momentum_coef, self.wd = lr_momentum, wd
        if storage == "device":
            self.weight = mx.nd.array(weight, ctx=self.ctx)
            self.momentum = mx.nd.array(momentum, ctx=self.ctx)
        else:
            self.weight, self.momentum = weight, momentum

    @classmethod
    def create(cls, count: int, dim: int, *, seed: int = 0, rank: int = 0, std: float = 0.01, **kw):
        """A fresh shard: centers ~ N(0, std^2), momentum zero."""
        rng = np.random.default_rng([seed, rank, 0x6261_6e6b])  # "bank": not the sampler's stream
        return cls(rng.standard_normal(size=(count, dim), dtype=np.float32) * np.float32(std), copy=False, **kw)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    def gather(self, sample: Sample) -> mx.nd.NDArray:
        """Sampled centers as float32 [S, D] on the compute context.

        For a full sample on device storage this is the shard itself, not a copy: r = 1.0 pays no gather.
        """
        if self.storage == "device":
            if sample.full:
                return self.weight
            return mx.nd.take(self.weight, _index(sample, self.ctx))
        rows = self.weight if sample.full else np.take(self.weight, sample.index, axis=0)
        return mx.nd.array(rows, ctx=self.ctx)

    def update(self, sample: Sample, grad: mx.nd.NDArray, lr: float) -> None:
        """SGD step on the sampled rows: mom = mu*mom - lr*(grad + wd*w); w += mom."""
        if self.storage == "device":
            kw = dict(lr=lr, momentum=self.momentum_coef, wd=self.wd)
            if sample.full:
                mx.nd.sgd_mom_update(self.weight, grad, self.momentum, out=self.weight, **kw)
                return
            idx = _index(sample, self.ctx)
            w, m = mx.nd.take(self.weight, idx), mx.nd.take(self.momentum, idx)
            mx.nd.sgd_mom_update(w, grad, m, out=w, **kw)  # updates m in place too
            self.weight[idx] = w
            self.momentum[idx] = m
            return
        g = grad.asnumpy()
        if sample.full:
            w, m = self.weight, self.momentum
        else:
            w, m = self.weight[sample.index], self.momentum[sample.index]
        m *= self.momentum_coef
        m -= lr * (g + self.wd * w)
        w += m
        if not sample.full:
            self.weight[sample.index] = w
            self.momentum[sample.index] = m

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(centers, momentum) as host numpy arrays, for checkpoints and tests."""
        if self.storage == "device":
            return self.weight.asnumpy(), self.momentum.asnumpy()
        return self.weight, self.momentum


def _index(sample: Sample, ctx) -> mx.nd.NDArray:
    return mx.nd.array(sample.index, ctx=ctx, dtype=np.int64)
