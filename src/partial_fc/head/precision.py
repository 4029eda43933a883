"""Storage dtypes of the memory bank: float32, float16 or bfloat16 for centers and momentum alike.

Arithmetic is always float32: rows are widened exactly when read and rounded back (to nearest, ties to
even) once when written. numpy has no bfloat16, so a bfloat16 array holds the top 16 bits of each float32 as
uint16. Pure numpy: checkpoints convert shards with it without loading MXNet.
"""
from __future__ import annotations

import numpy as np

DTYPES = ("float32", "float16", "bfloat16")
# numpy type that holds each storage dtype's bits.
_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
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


def as_storage(a, dtype: str, copy: bool, what: str) -> np.ndarray:
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
