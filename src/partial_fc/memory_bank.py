"""One rank's shard of class centers and their momentum (DESIGN §3 step 8).

Only the rows sampled in a step are read, updated and written back (sparse SGD with momentum and
weight decay, the same update rule as MXNet's sgd_mom_update); rows not sampled keep both their weight
and their momentum untouched. Centers are never allreduced: each rank owns its rows outright. On a float32
CPU bank the sampled rows are updated where they lie by a native operator (native/row_update.cc); elsewhere
stock operators update gathered copies and scatter them back.

Storage "device" keeps both arrays as NDArrays on the compute context; "host" keeps them as numpy arrays
in host memory (for GPU runs whose shard does not fit next to the backbone) and moves only sampled rows.

Storage dtype ("float32", "float16" or "bfloat16") applies to centers AND momentum. Arithmetic is always
float32: gathered rows are widened, updated, and rounded back to the storage dtype once on write-back
(round to nearest, ties to even). numpy has no bfloat16, so a bfloat16 bank holds the top 16 bits of each
float32 as uint16 (on device storage: MXNet's bfloat16 NDArray dtype, used only to move those bits;
MXNet 1.9.1's own float32 -> bfloat16 cast truncates instead of rounding, so the rounding is done here).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sysconfig

import mxnet as mx
import numpy as np

from .sampler import Sample, num_sampled
from .sharding import shard_range

STORAGES = ("device", "host")
DTYPES = ("float32", "float16", "bfloat16")
# numpy type that holds each storage dtype's bits.
_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
# MXNet 1.9.1 knows bfloat16 only as this structured dtype (take, scatter and copies work on it).
_MX_BF16 = np.dtype([("bfloat16", np.uint16)])
# Rows converted or generated at a time: bounds the float32 temporaries of a conversion to 16 MB at D=512.
CONVERT_ROWS = 8192


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"unknown memory bank dtype {dtype!r} (known: {', '.join(DTYPES)})")
    return dtype


def storage_numpy_dtype(dtype: str) -> type:
    """The numpy type holding a storage dtype's values (bfloat16: its bits, uint16)."""
    return _NUMPY[check_dtype(dtype)]


def itemsize(dtype: str) -> int:
    return np.dtype(_NUMPY[check_dtype(dtype)]).itemsize


def bank_bytes(count: int, dim: int, dtype: str = "float32") -> int:
    """Analytic bytes of one shard: centers + momentum, [count, dim] each, in the storage dtype."""
    return 2 * int(count) * int(dim) * itemsize(dtype)


def to_float32(a: np.ndarray, dtype: str) -> np.ndarray:
    """Storage-dtype array (numpy) -> float32, exactly (every value widens without rounding). A float32
    input comes back as it is, not copied."""
    if dtype == "bfloat16":
        return (np.asarray(a, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.asarray(a).astype(np.float32, copy=False)


def from_float32(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 array -> storage dtype, rounded to nearest with ties to even; inf stays inf, NaN stays NaN."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "float32":
        return x.copy()
    if dtype == "float16":
        return x.astype(np.float16)  # IEEE round-to-nearest-even, overflow to inf
    bits = x.view(np.uint32)
    # Adding 0x7fff plus the lowest kept bit, then dropping 16 bits, rounds to nearest, ties to even; it also
    # carries correctly into the exponent (up to inf). No finite or infinite input can overflow 32 bits.
    out = ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        # The carry could turn a NaN with only low mantissa bits into inf: keep it a (quiet) NaN.
        out[nan] = ((bits[nan] >> 16) | np.uint32(0x0040)).astype(np.uint16)
    return out


def convert_rows(src: np.ndarray, src_dtype: str, dst_dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    """Copy [count, D] rows from one storage dtype to another, CONVERT_ROWS at a time, so that converting
    a multi-GB shard (e.g. a memory-mapped checkpoint) needs no whole-shard float32 temporary."""
    if out is None:
        out = np.empty(src.shape, dtype=_NUMPY[check_dtype(dst_dtype)])
    if src_dtype == dst_dtype:
        out[...] = src
        return out
    for lo in range(0, src.shape[0], CONVERT_ROWS):
        hi = min(lo + CONVERT_ROWS, src.shape[0])
        out[lo:hi] = from_float32(to_float32(src[lo:hi], src_dtype), dst_dtype)
    return out


def _storage_array(a, dtype: str, copy: bool, what: str) -> np.ndarray:
    """A caller's array as storage: storage-typed input is kept (copied unless copy=False), other floating
    input is rounded to the storage dtype CONVERT_ROWS rows at a time."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{what} must be [count, dim], got shape {a.shape}")
    if a.dtype == _NUMPY[dtype]:
        return np.array(a, copy=copy)
    if a.dtype.kind != "f":
        raise ValueError(f"{what} of a {dtype} bank must be floating point or {np.dtype(_NUMPY[dtype]).name} "
                         f"bits, got {a.dtype}")
    return convert_rows(a, "float32", dtype)  # "float32": plain float values, widened/narrowed as they are


class MemoryBank:
    def __init__(self, weight: np.ndarray, momentum: np.ndarray | None = None, *, ctx=None,
                 storage: str = "device", lr_momentum: float = 0.9, wd: float = 5e-4, copy: bool = True,
                 dtype: str = "float32"):
        """weight/momentum: [count, D], float32 or already in the storage dtype `dtype` (bfloat16: uint16
        bits). With copy=False a host bank adopts arrays already in the storage dtype (no second copy of a
        multi-GB shard); by default it copies, so the caller's arrays are never updated."""
        if storage not in STORAGES:
            raise ValueError(f"unknown memory bank storage {storage!r} (known: {', '.join(STORAGES)})")
        self.dtype = check_dtype(dtype)
        if dtype == "float32":
            weight = np.array(weight, dtype=np.float32, copy=copy)
        else:
            weight = _storage_array(weight, dtype, copy, "centers")
        if weight.ndim != 2:
            raise ValueError(f"centers must be [count, dim], got shape {weight.shape}")
        if momentum is None:
            momentum = np.zeros_like(weight)
        elif dtype == "float32":
            momentum = np.array(momentum, dtype=np.float32, copy=copy)
        else:
            momentum = _storage_array(momentum, dtype, copy, "momentum")
        if momentum.shape != weight.shape:
            raise ValueError(f"momentum shape {momentum.shape} differs from centers {weight.shape}")
        self._settings(ctx, storage, lr_momentum, wd)
        if storage == "device":
            self.weight, self.momentum = self._device_array(weight), self._device_array(momentum)
        else:
            self.weight, self.momentum = weight, momentum
        release_free_memory()

    def _settings(self, ctx, storage, lr_momentum, wd):
        self.ctx = ctx or mx.cpu()
        self.storage = storage
        self.momentum_coef, self.wd = lr_momentum, wd
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
               ctx=None, storage: str = "device", lr_momentum: float = 0.9, wd: float = 5e-4,
               dtype: str = "float32"):
        """A fresh shard: centers ~ N(0, std^2), momentum zero.

        Generated CONVERT_ROWS rows at a time straight into storage: a float16 shard of 10 M-class size never
        exists as float32 in memory. The random stream is the same as one whole-shard draw, so the float32
        centers do not depend on the chunking."""
        if storage not in STORAGES:
            raise ValueError(f"unknown memory bank storage {storage!r} (known: {', '.join(STORAGES)})")
        bank = cls.__new__(cls)
        bank.dtype = check_dtype(dtype)
        bank._settings(ctx, storage, lr_momentum, wd)
        rng = np.random.default_rng([seed, rank, 0x6261_6e6b])  # "bank": not the sampler's stream
        if storage == "device":
            mx_dtype = _MX_BF16 if dtype == "bfloat16" else _NUMPY[dtype]
            bank.weight = mx.nd.empty((count, dim), ctx=bank.ctx, dtype=mx_dtype)
            bank.momentum = mx.nd.zeros((count, dim), ctx=bank.ctx, dtype=mx_dtype)
        else:
            bank.weight = np.empty((count, dim), dtype=_NUMPY[dtype])
            bank.momentum = np.zeros((count, dim), dtype=_NUMPY[dtype])
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
        size = self.weight.size + self.momentum.size
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

    def gather(self, sample: Sample, out: mx.nd.NDArray | None = None) -> mx.nd.NDArray:
        """Sampled centers as float32 [S, D] on the compute context.

        For a full sample on float32 device storage this is the shard itself, not a copy: r = 1.0 pays no
        gather. out: a float32 [S, D] array to gather into (float32 device storage only; a caller that keeps
        one between steps spares the page faults of a fresh multi-hundred-MB array)."""
        if out is not None and not sample.full and self.storage == "device" and self.dtype == "float32":
            return mx.nd.take(self.weight, _index(sample.index, self.ctx), out=out)
        return self.gather_rows(sample, 0, sample.index.size)

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
                    rows: mx.nd.NDArray | None = None) -> None:
        """SGD step on the sampled rows index[lo:hi]; grad float32 [hi - lo, D].

        rows: those rows' current centers as float32, if the caller already gathered them with gather_rows
        (the bank then skips a second gather; the array may be overwritten). Host storage and a full sample of
        a float32 device bank update the shard in place and ignore it."""
        if self.dtype == "float32":
            self._update_float32(sample, lo, hi, grad, lr, rows)
            return
        w = rows if rows is not None else self.gather_rows(sample, lo, hi)
        m = self._take(self.momentum, sample, lo, hi)
        index = sample.index[lo:hi]
        if self.storage == "device" and self.dtype == "float16":
            m = m.astype(np.float32)
            # float32 math on the rows, then one rounding of each result to the storage dtype.
            mx.nd.sgd_mom_update(w, grad, m, out=w, lr=lr, momentum=self.momentum_coef, wd=self.wd)
            self._put(self.weight, index, sample.full, w.astype(np.float16))
            self._put(self.momentum, index, sample.full, m.astype(np.float16))
            return
        w, m, g = w.asnumpy(), to_float32(m, self.dtype), grad.asnumpy()
        m *= self.momentum_coef
        m -= lr * (g + self.wd * w)
        w += m
        self._put(self.weight, index, sample.full, from_float32(w, self.dtype))
        self._put(self.momentum, index, sample.full, from_float32(m, self.dtype))

    def _update_float32(self, sample: Sample, lo: int, hi: int, grad: mx.nd.NDArray, lr: float,
                        rows: mx.nd.NDArray | None = None) -> None:
        whole = (lo, hi) == (0, self.weight.shape[0])
        if self.storage == "device":
            kw = dict(lr=lr, momentum=self.momentum_coef, wd=self.wd)
            if sample.full:
                w, m = (self.weight, self.momentum) if whole else (self.weight[lo:hi], self.momentum[lo:hi])
                mx.nd.sgd_mom_update(w, grad, m, out=w, **kw)  # in place (slices are views of the shard)
                return
            idx = _index(sample.index[lo:hi], self.ctx)
            w = rows if rows is not None else mx.nd.take(self.weight, idx)
            update_in_place = native_row_update(self.ctx)
            if update_in_place is not None:
                update_in_place(self.weight, self.momentum, w, grad, idx, **kw)
                return
            # Stock operators: update gathered copies of the rows, then scatter both back (twice the traffic).
            m = mx.nd.take(self.momentum, idx)
            mx.nd.sgd_mom_update(w, grad, m, out=w, **kw)  # updates m in place too
            self._scatter_rows(self.weight, idx, w)
            self._scatter_rows(self.momentum, idx, m)
            return
        g = grad.asnumpy()
        if sample.full:
            w, m = self.weight[lo:hi], self.momentum[lo:hi]  # views: updated in place
        else:
            index = sample.index[lo:hi]
            w, m = self.weight[index], self.momentum[index]
        m *= self.momentum_coef
        m -= lr * (g + self.wd * w)
        w += m
        if not sample.full:
            self.weight[index] = w
            self.momentum[index] = m

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(centers, momentum) as host numpy arrays in the storage dtype (bfloat16: uint16 bits), for
        checkpoints and tests. Host storage returns the arrays themselves (no copy)."""
        if self.storage == "device":
            w, m = self.weight.asnumpy(), self.momentum.asnumpy()
            if self.dtype == "bfloat16":
                w, m = w.view(np.uint16), m.view(np.uint16)
            return w, m
        return self.weight, self.momentum

    def numpy_float32(self) -> tuple[np.ndarray, np.ndarray]:
        """(centers, momentum) widened to float32 (a copy; for tests and small shards)."""
        w, m = self.numpy()
        return np.array(to_float32(w, self.dtype)), np.array(to_float32(m, self.dtype))


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc malloc_trim; nothing elsewhere).

    Building a multi-GB shard goes through many row blocks of temporaries (random draws, dtype conversions,
    copies in and out of MXNet); glibc keeps their freed pages, about 0.1 GiB at N_local = 1e6, which would
    otherwise stay resident next to the bank for the whole run."""
    global _malloc_trim
    if _malloc_trim is None:
        name = ctypes.util.find_library("c")
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
        _malloc_trim = trim or (lambda _pad: 0)
    _malloc_trim(0)


_malloc_trim = None


_NATIVE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native")
# setup.py builds the library as an extension of this interpreter, hence its file name suffix.
NATIVE_LIBRARY = "_row_update" + sysconfig.get_config_var("EXT_SUFFIX")
_native = {}  # device type -> the loaded operator, or None where it is not available
_log = logging.getLogger(__name__)


def native_row_update(ctx):
    """mx.nd.pfc_sgd_mom_rows (native/row_update.cc: SGD with momentum on rows of the bank, in place), or None
    where the bank's context cannot run it.

    The operator is CPU only; GPU banks and a CPU bank without the compiled library (the project not
    installed by scripts/install.sh) take the stock-operator path, which computes the same numbers with about
    twice the memory traffic. The library is loaded once per process, on first use."""
    kind = ctx.device_type
    if kind not in _native:
        _native[kind] = _load_native() if kind == "cpu" else None
    return _native[kind]


def _load_native():
    path = os.path.join(_NATIVE_DIR, NATIVE_LIBRARY)
    if not os.path.exists(path):
        _log.warning("%s: missing (the project was not installed by scripts/install.sh); the sampled center "
                     "update uses stock MXNet operators, about twice as slow", path)
        return None
    # Loading registers an operator, which writes MXNet's operator tables; no queued operator may be reading
    # them from an engine thread meanwhile.
    mx.nd.waitall()
    try:
        mx.library.load(path, verbose=False)
    except mx.base.MXNetError as e:
        _log.warning("%s: cannot be loaded by this MXNet (%s); rebuild it with scripts/install.sh. The sampled "
                     "center update uses stock MXNet operators, about twice as slow", path,
                     str(e).strip().splitlines()[-1])
        return None
    return mx.nd.pfc_sgd_mom_rows


def _index(index: np.ndarray, ctx) -> mx.nd.NDArray:
    return mx.nd.array(index, ctx=ctx, dtype=np.int64)


# --- the memory plan: what one rank holds, from the same formula as bank_bytes ---

# [N, S] float32 arrays alive at once at the operator's peak: the cosines, and the buffer that the logits,
# their exp and gradients overwrite in place (partial_fc.py's forward_backward).
LIVE_LOGITS = 2
# float32 [rows, D] arrays alive per chunk of sampled rows: the center gradient (two buffers used in turn),
# the projection scratch, and the chunk's gathered centers and momentum. (A float32 CPU bank's native update
# gathers no momentum; the plan keeps the stock operators' count, which GPU banks use.)
LIVE_CHUNKS = 5


def memory_plan(num_classes: int, world_size: int, dim: int = 512, dtype: str = "float16",
                sample_rate: float = 0.1, batch: int = 64, chunk_rows: int | None = None) -> dict:
    """Per-rank memory of the Partial FC head for `num_classes` over `world_size` workers (largest shard).

    batch: per-worker batch (the logits are [batch * world_size, S]). chunk_rows: sampled rows processed
    at a time (default: the operator's chunk for this D). Returns bytes and counts; the bank part is
    bank_bytes(), the formula `partial-fc bench memory` checks against a real bank.
    """
    from .partial_fc import chunk_rows_for

    _, n_local = shard_range(num_classes, world_size, 0)
    s = num_sampled(n_local, sample_rate, 0)
    n = batch * world_size
    rows = min(s, chunk_rows or chunk_rows_for(dim, dtype, s))
    centers = n_local * dim * itemsize(dtype)
    logits = n * s * 4
    chunk = rows * dim * 4
    # A float32 device bank gathers the sampled rows once per step into one float32 [S, D] copy.
    kept = s * dim * 4 if dtype == "float32" else 0
    working = LIVE_LOGITS * logits + kept + LIVE_CHUNKS * chunk + 2 * n * dim * 4
    return {
        "num_classes": num_classes, "world_size": world_size, "dim": dim, "dtype": dtype,
        "sample_rate": sample_rate, "batch": batch, "n_local": n_local, "sampled": s, "global_batch": n,
        "centers_bytes": centers, "momentum_bytes": centers, "bank_bytes": bank_bytes(n_local, dim, dtype),
        "logits_bytes": logits, "kept_bytes": kept, "chunk_rows": rows, "chunk_bytes": chunk,
        "working_bytes": working,
        "total_bytes": bank_bytes(n_local, dim, dtype) + working,
    }


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def format_memory_plan(plans: list[dict]) -> str:
    """A markdown table of memory_plan() rows."""
    lines = ["| classes | W | dtype | rows per rank | centers | momentum | sampled rows S | logits [N,S] fp32 "
             "| working set | total per rank |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in plans:
        lines.append(f"| {p['num_classes']:.3g} | {p['world_size']} | {p['dtype']} | {p['n_local']:,} "
                     f"| {_gb(p['centers_bytes'])} | {_gb(p['momentum_bytes'])} | {p['sampled']:,} "
                     f"| {_gb(p['logits_bytes'])} | {_gb(p['working_bytes'])} | {_gb(p['total_bytes'])} |")
    return "\n".join(lines) + "\n"

