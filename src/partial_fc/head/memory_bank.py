"""One rank's shard of class centers and their momentum (docs/design.md §3 step 8).

Only the rows sampled in a step are read, updated and written back (sparse SGD with momentum and
weight decay, the same update rule as MXNet's sgd_mom_update); rows not sampled keep both their weight
and their momentum untouched. Centers are never allreduced: each rank owns its rows outright. On a float32
CPU bank the sampled rows are gathered (with their norms) and updated where they lie by native operators
(native/row_update.cc); elsewhere stock operators gather, update the copies and scatter them back.

Storage "device" keeps both arrays as NDArrays on the compute context; "host" keeps them as numpy arrays
in host memory (for GPU runs whose shard does not fit next to the backbone) and moves only sampled rows.

Storage dtype ("float32", "float16" or "bfloat16") applies to centers AND momentum. Arithmetic is always
float32: gathered rows are widened, updated, and rounded back to the storage dtype once on write-back
(round to nearest, ties to even). numpy has no bfloat16, so a bfloat16 bank holds the top 16 bits of each
float32 as uint16 (on device storage: MXNet's bfloat16 NDArray dtype, used only to move those bits;
MXNet 1.9.1's own float32 -> bfloat16 cast truncates instead of rounding, so the rounding is done here).
"""
from __future__ import annotations

import mxnet as mx
import numpy as np

from . import kernels
from .native import native_gather, native_row_update, release_free_memory
from .precision import CONVERT_ROWS, as_storage, check_dtype, from_float32, itemsize, storage_numpy_dtype, to_float32
from .sampler import Sample

STORAGES = ("device", "host")
# MXNet 1.9.1 knows bfloat16 only as this structured dtype (take, scatter and copies work on it).
_MX_BF16 = np.dtype([("bfloat16", np.uint16)])


class MemoryBank:
    """One rank's centers `weight` and their momentum `mom`, [count, D] each, with the SGD coefficients
    `momentum` and `wd` (the names of MXNet's sgd_mom_update)."""

    def __init__(self, weight: np.ndarray, mom: np.ndarray | None = None, *, ctx=None,
                 storage: str = "device", momentum: float = 0.9, wd: float = 5e-4, copy: bool = True,
                 dtype: str = "float32"):
        """weight, mom: [count, D], float32 or already in the storage dtype `dtype` (bfloat16: uint16 bits).
        With copy=False a host bank adopts arrays already in the storage dtype (no second copy of a
        multi-GB shard); by default it copies, so the caller's arrays are never updated."""
        if storage not in STORAGES:
            raise ValueError(f"unknown memory bank storage {storage!r} (known: {', '.join(STORAGES)})")
        self.dtype = check_dtype(dtype)
        if dtype == "float32":
            weight = np.array(weight, dtype=np.float32, copy=copy)
        else:
            weight = as_storage(weight, dtype, copy, "centers")
        if weight.ndim != 2:
            raise ValueError(f"centers must be [count, dim], got shape {weight.shape}")
        if mom is None:
            mom = np.zeros_like(weight)
        elif dtype == "float32":
            mom = np.array(mom, dtype=np.float32, copy=copy)
        else:
            mom = as_storage(mom, dtype, copy, "momentum")
        if mom.shape != weight.shape:
            raise ValueError(f"momentum shape {mom.shape} differs from centers {weight.shape}")
        self._settings(ctx, storage, momentum, wd)
        if storage == "device":
            self.weight, self.mom = self._device_array(weight), self._device_array(mom)
        else:
            self.weight, self.mom = weight, mom
        release_free_memory()

    def _settings(self, ctx, storage, momentum, wd):
        self.ctx = ctx or mx.cpu()
        self.storage = storage
        self.momentum, self.wd = momentum, wd
        if storage == "device" and self.dtype == "float32":
            native_row_update(self.ctx)  # load it now, while nothing runs, and warn at setup if it is missing

    def _device_array(self, a: np.ndarray) -> mx.nd.NDArray:
        if self.dtype != "bfloat16":
            return mx.nd.array(a, ctx=self.ctx, dtype=a.dtype)
        out = mx.nd.empty(a.shape, ctx=self.ctx, dtype=_MX_BF16)
        out._sync_copyfrom(np.ascontiguousarray(a).view(_MX_BF16))  # the bits, not a value conversion
        return out

    @classmethod
    def create(cls, count: int, dim: int, *, seed: int = 0, rank: int = 0, std: float = 0.01,
               ctx=None, storage: str = "device", momentum: float = 0.9, wd: float = 5e-4,
               dtype: str = "float32"):
        """A fresh shard: centers ~ N(0, std^2), momentum zero.

        Generated CONVERT_ROWS rows at a time straight into storage: a float16 shard of 10 M-class size never
        exists as float32 in memory. The random stream is the same as one whole-shard draw, so the float32
        centers do not depend on the chunking."""
        if storage not in STORAGES:
            raise ValueError(f"unknown memory bank storage {storage!r} (known: {', '.join(STORAGES)})")
        bank = cls.__new__(cls)
        bank.dtype = check_dtype(dtype)
        bank._settings(ctx, storage, momentum, wd)
        rng = np.random.default_rng([seed, rank, 0x6261_6e6b])  # "bank": not the sampler's stream
        if storage == "device":
            mx_dtype = _MX_BF16 if dtype == "bfloat16" else storage_numpy_dtype(dtype)
            bank.weight = mx.nd.empty((count, dim), ctx=bank.ctx, dtype=mx_dtype)
            bank.mom = mx.nd.zeros((count, dim), ctx=bank.ctx, dtype=mx_dtype)
        else:
            bank.weight = np.empty((count, dim), dtype=storage_numpy_dtype(dtype))
            bank.mom = np.zeros((count, dim), dtype=storage_numpy_dtype(dtype))
        for lo in range(0, count, CONVERT_ROWS):
            hi = min(lo + CONVERT_ROWS, count)
            rows = rng.standard_normal(size=(hi - lo, dim), dtype=np.float32) * np.float32(std)
            bank._put(bank.weight, np.arange(lo, hi), True, from_float32(rows, dtype) if dtype != "float32" else rows)
        mx.nd.waitall()
        release_free_memory()
        return bank

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the shard occupies: centers + momentum (equals bank_bytes(count, dim, dtype))."""
        size = self.weight.size + self.mom.size
        return int(size * itemsize(self.dtype))

    # --- raw row access: storage dtype in and out ---

    def _take(self, array, sample: Sample, lo: int, hi: int):
        """Rows index[lo:hi] of `array` as storage-typed numpy (host / bfloat16) or NDArray (device)."""
        if self.storage == "device":
            if sample.full:
                rows = array if (lo, hi) == (0, array.shape[0]) else array[lo:hi]
            else:
                rows = mx.nd.take(array, _index(sample.index[lo:hi], self.ctx))
            return rows.asnumpy().view(np.uint16) if self.dtype == "bfloat16" else rows
        return array[lo:hi] if sample.full else np.take(array, sample.index[lo:hi], axis=0)

    def _put(self, array, index: np.ndarray, contiguous: bool, values) -> None:
        """Write storage-typed rows (numpy or NDArray) to rows `index` of `array`."""
        if self.storage == "host":
            values = values.asnumpy() if isinstance(values, mx.nd.NDArray) else values
            if contiguous:
                array[index[0]:index[0] + len(index)] = values
            else:
                array[index] = values
            return
        if not isinstance(values, mx.nd.NDArray):
            values = self._device_array(np.ascontiguousarray(values))
        if contiguous:
            array[int(index[0]):int(index[0]) + len(index)] = values
        else:
            self._scatter_rows(array, _index(index, self.ctx), values)

    def _scatter_rows(self, array: mx.nd.NDArray, idx: mx.nd.NDArray, values: mx.nd.NDArray) -> None:
        """array[idx] = values for an int64 row index NDArray, on device storage."""
        if self.dtype == "bfloat16":
            array[idx] = values
        else:
            # The scatter op itself: about twice as fast as NDArray item assignment with an index array.
            mx.nd._internal._scatter_set_nd(lhs=array, rhs=values, indices=idx.reshape((1, -1)), shape=array.shape,
                                            out=array)

    # --- float32 views of rows ---

    def gather(self, sample: Sample, out: mx.nd.NDArray | None = None,
               inv_norms: mx.nd.NDArray | None = None) -> mx.nd.NDArray:
        """Sampled centers as float32 [S, D] on the compute context.

        For a full sample on float32 device storage this is the shard itself, not a copy: r = 1.0 pays no
        gather. out: a float32 [S, D] array to gather into (float32 device storage only; a caller that keeps
        one between steps spares the page faults of a fresh multi-hundred-MB array). inv_norms: a float32 [S]
        array that receives 1 / |w| of each row; a float32 CPU bank computes them in the gather's own pass
        (native/row_update.cc, pfc_gather_rows), elsewhere they are computed from the gathered rows."""
        if out is not None and not sample.full and self.storage == "device" and self.dtype == "float32":
            gather = native_gather(self.ctx)
            idx = _index(sample.index, self.ctx)
            if gather is not None and inv_norms is not None:
                gather(self.weight, idx, out=(out, inv_norms))
                return out
            rows = mx.nd.take(self.weight, idx, out=out)
        else:
            rows = self.gather_rows(sample, 0, sample.index.size)
        if inv_norms is not None:
            kernels.inv_row_norms(rows, out=inv_norms)
        return rows

    def gather_rows(self, sample: Sample, lo: int, hi: int) -> mx.nd.NDArray:
        """Centers of the sampled rows index[lo:hi] as float32 [hi - lo, D] on the compute context (a view of
        the shard for a full sample on float32 device storage, else a fresh array)."""
        rows = self._take(self.weight, sample, lo, hi)
        if self.storage == "device" and self.dtype != "bfloat16":
            return rows if self.dtype == "float32" else rows.astype(np.float32)
        return mx.nd.array(to_float32(rows, self.dtype), ctx=self.ctx)

    def update(self, sample: Sample, grad: mx.nd.NDArray, lr: float) -> None:
        """SGD step on the sampled rows: mom = mu*mom - lr*(grad + wd*w); w += mom."""
        self.update_rows(sample, 0, sample.index.size, grad, lr)

    def update_rows(self, sample: Sample, lo: int, hi: int, grad: mx.nd.NDArray, lr: float,
                    rows: mx.nd.NDArray | None = None, project: bool = False) -> None:
        """SGD step on the sampled rows index[lo:hi]; grad float32 [hi - lo, D].

        rows: those rows' current centers as float32, if the caller already gathered them with gather_rows
        (the bank then skips a second gather; the array may be overwritten). Host storage and a float32 device
        bank update the shard in place and ignore it.
        project: grad is taken before the center normalisation's projection, and the step applies its part
        tangent to each row's sphere, kernels.tangent(grad, w) (in the native update's one pass over the rows
        when the bank is a float32 CPU one)."""
        native = self.dtype == "float32" and self.storage == "device" and native_row_update(self.ctx) is not None
        if project and not native:
            rows = rows if rows is not None else self.gather_rows(sample, lo, hi)
            grad, project = kernels.tangent(grad, rows), False
        if self.dtype == "float32":
            self._update_float32(sample, lo, hi, grad, lr, rows, project)
            return
        w = rows if rows is not None else self.gather_rows(sample, lo, hi)
        m = self._take(self.mom, sample, lo, hi)
        index = sample.index[lo:hi]
        if self.storage == "device" and self.dtype == "float16":
            m = m.astype(np.float32)
            # float32 math on the rows, then one rounding of each result to the storage dtype.
            mx.nd.sgd_mom_update(w, grad, m, out=w, lr=lr, momentum=self.momentum, wd=self.wd)
            self._put(self.weight, index, sample.full, w.astype(np.float16))
            self._put(self.mom, index, sample.full, m.astype(np.float16))
            return
        w, m, g = w.asnumpy(), to_float32(m, self.dtype), grad.asnumpy()
        m *= self.momentum
        m -= lr * (g + self.wd * w)
        w += m
        self._put(self.weight, index, sample.full, from_float32(w, self.dtype))
        self._put(self.mom, index, sample.full, from_float32(m, self.dtype))

    def _update_float32(self, sample: Sample, lo: int, hi: int, grad: mx.nd.NDArray, lr: float,
                        rows: mx.nd.NDArray | None = None, project: bool = False) -> None:
        whole = (lo, hi) == (0, self.weight.shape[0])
        if self.storage == "device":
            kw = dict(lr=lr, momentum=self.momentum, wd=self.wd)
            update_in_place = native_row_update(self.ctx)
            # project: only with the native update (update_rows), which projects as it updates.
            if project or (not sample.full and update_in_place is not None):
                idx = _index(sample.index[lo:hi], self.ctx)
                # The bank's arrays are the outputs: the rows are updated where they lie (row_update.cc).
                update_in_place(self.weight, self.mom, grad, idx, project=int(project), out=(self.weight, self.mom),
                                **kw)
                return
            if sample.full:
                w, m = (self.weight, self.mom) if whole else (self.weight[lo:hi], self.mom[lo:hi])
                mx.nd.sgd_mom_update(w, grad, m, out=w, **kw)  # in place (slices are views of the shard)
                return
            idx = _index(sample.index[lo:hi], self.ctx)
            w = rows if rows is not None else mx.nd.take(self.weight, idx)
            # Stock operators: update gathered copies of the rows, then scatter both back (twice the traffic).
            m = mx.nd.take(self.mom, idx)
            mx.nd.sgd_mom_update(w, grad, m, out=w, **kw)  # updates m in place too
            self._scatter_rows(self.weight, idx, w)
            self._scatter_rows(self.mom, idx, m)
            return
        g = grad.asnumpy()
        if sample.full:
            w, m = self.weight[lo:hi], self.mom[lo:hi]  # views: updated in place
        else:
            index = sample.index[lo:hi]
            w, m = self.weight[index], self.mom[index]
        m *= self.momentum
        m -= lr * (g + self.wd * w)
        w += m
        if not sample.full:
            self.weight[index] = w
            self.mom[index] = m

    def write_rows(self, index: np.ndarray, rows: np.ndarray) -> None:
        """Set the centers of shard rows `index` (int64 [n], sorted unique) to float32 `rows` [n, D], rounded once
        to the storage dtype; their momentum is left as it is (center imprinting, head/imprint.py)."""
        index = np.asarray(index, dtype=np.int64)
        if index.size == 0:
            return
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        contiguous = bool(index[-1] - index[0] + 1 == index.size)
        self._put(self.weight, index, contiguous, rows if self.dtype == "float32" else from_float32(rows, self.dtype))
        mx.nd.waitall()

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(centers, momentum) as host numpy arrays in the storage dtype (bfloat16: uint16 bits), for
        checkpoints and tests. Host storage returns the arrays themselves (no copy)."""
        if self.storage == "device":
            w, m = self.weight.asnumpy(), self.mom.asnumpy()
            if self.dtype == "bfloat16":
                w, m = w.view(np.uint16), m.view(np.uint16)
            return w, m
        return self.weight, self.mom

    def numpy_float32(self) -> tuple[np.ndarray, np.ndarray]:
        """(centers, momentum) widened to float32 (a copy; for tests and small shards)."""
        w, m = self.numpy()
        return np.array(to_float32(w, self.dtype)), np.array(to_float32(m, self.dtype))


def _index(index: np.ndarray, ctx) -> mx.nd.NDArray:
    return mx.nd.array(index, ctx=ctx, dtype=np.int64)
