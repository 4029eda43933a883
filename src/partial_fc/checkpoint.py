"""Checkpoints: written atomically, complete on every rank before they count, resumable at any world size.

One checkpoint at step N in the output folder:
    model-symbol.json              the embedding graph (input `data`, output `fc1`), as MXNet writes it
    model-NNNN.params              backbone arg:/aux: parameters (mx.model.load_checkpoint(prefix, N) reads it)
    model-NNNN.states              backbone optimizer state (momentum; fp32 master weights in fp16 mode)
    model-NNNN.centers/rankK.weight.npy, rankK.momentum.npy   each rank's class-center shard
    model-NNNN.json                the manifest, written last: step, network, C, W, D, each shard's class
                                   range, file names, trainer state, config
Every file goes to a temporary name first and is renamed when complete; ranks meet at a barrier, and only
then does rank 0 write the manifest. A checkpoint without its manifest is ignored, so a crash during a
save leaves the previous checkpoint as the newest usable one. Older checkpoints beyond `keep` are removed
manifest first, for the same reason.

Resuming at another world size re-shards the centers: each new rank reads the rows of its new class range
from whichever old shards hold them (only those rows are read, with plain reads: see _read_rows).
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
from dataclasses import dataclass

import numpy as np

from . import atomic
from .errors import UserError
from .head.sharding import shard_range

PREFIX = "model"
_MANIFEST = re.compile(r"^" + PREFIX + r"-(\d{4,})\.json$")


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, incomplete, or does not fit the run that wants it."""


def _stem(output: str, step: int) -> str:
    return os.path.join(output, f"{PREFIX}-{step:04d}")


def _write_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def save(output: str, step: int, *, comm, symbol, arg_params: dict, aux_params: dict, save_states,
         centers: tuple[np.ndarray, np.ndarray], meta: dict, keep: int, bank_dtype: str = "float32") -> str:
    """Write this rank's part of the checkpoint at `step`; rank 0 completes it. Returns the manifest path.

    save_states(path): writes the backbone optimizer state (rank 0 only; identical on every rank).
    centers: this rank's (weight, momentum) [count, D], its shard_range(num_classes, size, rank), in the bank's
    storage dtype `bank_dtype` (bfloat16 as uint16 bits), saved as they are. meta: network, num_classes, embedding_size, ...
    Every rank must call it (it has barriers).
    """
    import mxnet as mx

    stem = _stem(output, step)
    shard_dir = stem + ".centers"
    manifest = stem + ".json"
    if comm.rank == 0 and os.path.exists(manifest):
        # Saving a step that already has a checkpoint (a resume from an older one): the old manifest must not
        # name a mix of old and new files if this save is cut short, so it goes first.
        os.remove(manifest)
    # Horovod: nobody writes before a stale manifest of this step is gone.
    comm.barrier("pfc.checkpoint_begin")
    mine = [os.path.join(shard_dir, f"rank{comm.rank}.weight.npy"),
            os.path.join(shard_dir, f"rank{comm.rank}.momentum.npy")]
    if comm.rank == 0:
        mine += [stem + ".params", stem + ".states"]

    writing = [shard_dir]  # the file being written, for the error message (MXNet's errors do not name it)

    def write(path, how):
        writing[0] = path
        atomic.replace(path, how)

    def write_part():
        os.makedirs(shard_dir, exist_ok=True)
        weight, momentum = centers
        write(mine[0], lambda tmp: _write_npy(tmp, weight))
        write(mine[1], lambda tmp: _write_npy(tmp, momentum))
        if comm.rank == 0:
            write(os.path.join(output, f"{PREFIX}-symbol.json"), symbol.save)
            params = {f"arg:{k}": v for k, v in arg_params.items()}
            params.update({f"aux:{k}": v for k, v in aux_params.items()})
            write(stem + ".params", lambda tmp: mx.nd.save(tmp, params))
            write(stem + ".states", save_states)

    # Horovod: the manifest may only name files that every rank has finished writing, and a rank that could
    # not write (a full disk) must stop every rank, not leave them waiting.
    _agree(comm, "pfc.checkpoint_written", step, output, write_part, mine, writing)

    def commit():
        shards = []
        for k in range(comm.size):
            s, c = shard_range(meta["num_classes"], comm.size, k)
            shards.append({"rank": k, "start": s, "count": c,
                           "weight": f"{os.path.basename(shard_dir)}/rank{k}.weight.npy",
                           "momentum": f"{os.path.basename(shard_dir)}/rank{k}.momentum.npy"})
        doc = dict(meta, step=step, world_size=comm.size, symbol=f"{PREFIX}-symbol.json", bank_dtype=bank_dtype,
                   params=os.path.basename(stem + ".params"), states=os.path.basename(stem + ".states"),
                   shards=shards)
        writing[0] = manifest
        atomic.write_text(manifest, json.dumps(doc, indent=1, sort_keys=True))

    # Horovod: nobody returns before the manifest exists, or a rank that goes on to resume (or to read the
    # newest checkpoint) could look before rank 0 has finished writing it.
    _agree(comm, "pfc.checkpoint_committed", step, output, commit if comm.rank == 0 else None, mine, writing)
    if comm.rank == 0:
        try:
            _prune(output, keep)
        except OSError as e:  # the new checkpoint is complete; an old one left behind only costs space
            print(f"partial-fc: warning: could not remove an old checkpoint: {e}", flush=True)
    return manifest


def _agree(comm, name: str, step: int, output: str, work, files: list[str], writing: list[str]) -> None:
    """Run `work` on this rank, then learn from every rank whether theirs succeeded (one collective).

    On any failure every rank removes its files of this step and raises CheckpointError: the save fails
    loudly everywhere at once, and the previous checkpoint stays the newest complete one.
    """
    import mxnet as mx

    error = None
    if work is not None:
        try:
            work()
        except (OSError, mx.base.MXNetError) as e:  # MXNet reports its own write failures as MXNetError
            error = e
    failed = comm.allgather(mx.nd.array([1.0 if error else 0.0]), name).asnumpy()
    if not failed.any():
        return
    for path in files:
        if os.path.exists(path):
            os.remove(path)
    if files:
        try:
            os.rmdir(os.path.dirname(files[0]))  # the step's centers folder, once every rank emptied it
        except OSError:
            pass
    previous = latest(output)
    keep = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
    if error is not None:
        raise CheckpointError(f"checkpoint at step {step} not saved: rank {comm.rank} could not write "
                              f"{writing[0]} ({_reason(error)}); {keep} (free space, then resume with PFC_RESUME=1)")
    ranks = ", ".join(str(k) for k in np.flatnonzero(failed))
    raise CheckpointError(f"checkpoint at step {step} not saved: rank(s) {ranks} could not write their part "
                          f"(their error names the file); {keep}")


def _reason(error) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    # MXNet's message is a C++ traceback; its last line holds the check that failed.
    lines = [x.strip() for x in str(error).splitlines() if x.strip()]
    last = lines[-1] if lines else type(error).__name__
    return last.replace("MXNetError: ", "").replace("Check failed: ", "").replace("std: :", "std::")


def remove_incomplete(output: str) -> list[str]:
    """Delete what a killed save left behind: temporary files, and files of steps that have no manifest.

    Called by rank 0 at start-up, before any rank saves. Returns the removed paths.
    """
    if not os.path.isdir(output):
        return []
    complete = set(_steps(output))
    removed = []
    pattern = re.compile(r"^" + PREFIX + r"-(\d{4,})\.(params|states|centers)$")
    for name in os.listdir(output):
        path = os.path.join(output, name)
        m = pattern.match(name)
        if ".tmp-" in name or (m and int(m.group(1)) not in complete):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
            removed.append(path)
    for step in complete:
        shard_dir = _stem(output, step) + ".centers"
        for name in os.listdir(shard_dir) if os.path.isdir(shard_dir) else []:
            if ".tmp-" in name:
                os.remove(os.path.join(shard_dir, name))
                removed.append(os.path.join(shard_dir, name))
    return removed


def _steps(output: str) -> list[int]:
    steps = []
    for path in glob.glob(os.path.join(glob.escape(output), f"{PREFIX}-*.json")):
        m = _MANIFEST.match(os.path.basename(path))
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps)


def _prune(output: str, keep: int) -> None:
    for step in _steps(output)[:-keep]:
        stem = _stem(output, step)
        os.remove(stem + ".json")  # first: from here on this checkpoint no longer counts
        for path in (stem + ".params", stem + ".states"):
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(stem + ".centers", ignore_errors=True)


def latest(output: str) -> str | None:
    """The manifest of the newest complete checkpoint in `output`, or None."""
    steps = _steps(output) if os.path.isdir(output) else []
    return _stem(output, steps[-1]) + ".json" if steps else None


@dataclass
class Checkpoint:
    path: str      # the manifest
    meta: dict

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def _file(self, name: str) -> str:
        path = os.path.join(os.path.dirname(self.path), name)
        if not os.path.exists(path):
            raise CheckpointError(f"{self.path}: names {name}, which is missing")
        return path

    @property
    def states_path(self) -> str:
        return self._file(self.meta["states"])

    def backbone(self) -> tuple[dict, dict]:
        """(arg_params, aux_params) as NDArrays on the CPU."""
        import mxnet as mx

        path = self._file(self.meta["params"])
        try:
            loaded = mx.nd.load(path)
        except mx.base.MXNetError as e:
            raise CheckpointError(f"{path}: cannot be read as MXNet parameters ({str(e).splitlines()[0]})") from None
        arg = {k[4:]: v for k, v in loaded.items() if k.startswith("arg:")}
        aux = {k[4:]: v for k, v in loaded.items() if k.startswith("aux:")}
        return arg, aux

    def centers(self, start: int, count: int, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, start + count) of the centers and their momentum, from whichever shards hold them,
        in bank storage dtype `dtype` (converted in row chunks from the dtype they were saved in)."""
        from .head.precision import DTYPES, storage_numpy_dtype

        D = int(self.meta["embedding_size"])
        saved = self.meta.get("bank_dtype", "float32")  # checkpoints from before compact banks are float32
        if saved not in DTYPES:
            raise CheckpointError(f"{self.path}: unknown bank_dtype {saved!r} (known: {', '.join(DTYPES)})")
        weight = np.empty((count, D), dtype=storage_numpy_dtype(dtype))
        momentum = np.empty((count, D), dtype=storage_numpy_dtype(dtype))
        filled = 0
        for shard in self.meta["shards"]:
            lo, hi = max(start, shard["start"]), min(start + count, shard["start"] + shard["count"])
            if lo >= hi:
                continue
            for out, key in ((weight, "weight"), (momentum, "momentum")):
                path = self._file(shard[key])
                shape, stored, fortran, offset = _npy_header(path)
                if shape != (shard["count"], D) or stored != storage_numpy_dtype(saved) or fortran:
                    raise CheckpointError(f"{path}: holds {stored} {shape}, the manifest says {saved} "
                                          f"({shard['count']}, {D})")
                _read_rows(path, offset, lo - shard["start"], hi - shard["start"], saved, dtype,
                           out[lo - start:hi - start])
            filled += hi - lo
        if filled != count:
            raise CheckpointError(f"{self.path}: its shards cover {filled} of classes [{start}, {start + count})")
        return weight, momentum


# Bytes read at a time from a shard file (a single read() of more than ~2 GiB returns short on Linux).
READ_BYTES = 64 << 20


def _npy_header(path: str) -> tuple[tuple, np.dtype, bool, int]:
    """(shape, dtype, fortran order, byte offset of the data) of a .npy file, from its header alone."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read(f)
            offset = f.tell()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: not a .npy array ({e})") from None
    size = os.path.getsize(path)
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < need:
        raise CheckpointError(f"{path}: {size} bytes, its header describes {need} (truncated?)")
    return tuple(shape), dtype, bool(fortran), offset


def _read_rows(path: str, offset: int, lo: int, hi: int, saved: str, dtype: str, out: np.ndarray) -> None:
    """Rows [lo, hi) of the C-ordered [count, D] .npy at `path` (data from byte `offset`), stored as `saved`,
    into `out` [hi - lo, D] in storage dtype `dtype`.

    Read with plain reads, not through a memory map: a rank resuming at half the world size reads half of its
    new shard from each of two old ones, and the pages of a mapped file count in its resident memory for as long
    as they stay mapped; at 1e8 classes, W = 8 -> 4 that put each rank's peak 0.13 GiB (a sixth of its bank)
    above its memory plan (`partial-fc bench scale`). Read pages only pass through the page cache."""
    from .head.precision import CONVERT_ROWS, convert_rows, storage_numpy_dtype

    src = np.dtype(storage_numpy_dtype(saved))
    D = out.shape[1]
    row_bytes = D * src.itemsize
    step = max(1, READ_BYTES // row_bytes) if saved == dtype else CONVERT_ROWS
    buffer = None if saved == dtype else np.empty((min(step, hi - lo), D), dtype=src)
    with open(path, "rb") as f:
        f.seek(offset + lo * row_bytes)
        for a in range(0, hi - lo, step):
            b = min(a + step, hi - lo)
            target = out[a:b] if buffer is None else buffer[:b - a]
            view = memoryview(target).cast("B")
            got = 0
            while got < view.nbytes:
                n = f.readinto(view[got:])
                if not n:
                    raise CheckpointError(f"{path}: ends inside row {lo + a + got // row_bytes} (truncated?)")
                got += n
            if buffer is not None:
                convert_rows(target, saved, dtype, out=out[a:b])


def load(path: str) -> Checkpoint:
    """Read a manifest (a model-NNNN.json path)."""
    try:
        with open(path) as f:
            meta = json.load(f)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not a checkpoint manifest ({e})") from None
    needed = ("step", "network", "num_classes", "embedding_size", "world_size", "shards", "params", "states")
    missing = [k for k in needed if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint manifest (missing {', '.join(missing)})")
    return Checkpoint(path, meta)


def check_compatible(ckpt: Checkpoint, *, network: str, num_classes: int, embedding_size: int) -> None:
    """A checkpoint of another network, class count or embedding size cannot continue this run."""
    for key, want in (("network", network), ("num_classes", num_classes), ("embedding_size", embedding_size)):
        if ckpt.meta[key] != want:
            raise CheckpointError(f"{ckpt.path}: was trained with {key}={ckpt.meta[key]!r}, this run has {want!r}")
