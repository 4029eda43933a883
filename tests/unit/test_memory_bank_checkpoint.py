"""Checkpoints of compact banks: saved in the storage dtype, loaded (and re-sharded) into any bank dtype,
and exact resume bit for bit with float16 and bfloat16 banks."""
import json

import mxnet as mx
import numpy as np
import pytest

from support import trainer_cases as cases
from partial_fc import checkpoint
from partial_fc.checkpoint import CheckpointError
from partial_fc.head.precision import from_float32, to_float32
from partial_fc.head.sharding import shard_range


class FakeComm:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def barrier(self, name):
        pass

    def allgather(self, x, name):
        return x  # every rank's part is written by this one process: the others' answers are this one's


def save_world(out, centers, momentum, W, dtype):
    """Every rank's part of a checkpoint whose shards are stored as `dtype` (rank 0 last: it writes the manifest)."""
    sym = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=2, flatten=True, name="fc1")
    meta = dict(network="mbf", num_classes=len(centers), embedding_size=centers.shape[1])
    for k in list(range(1, W)) + [0]:
        s, c = shard_range(len(centers), W, k)
        path = checkpoint.save(out, 1, comm=FakeComm(k, W), symbol=sym, arg_params={}, aux_params={},
                               save_states=lambda p: open(p, "wb").write(b"s"), meta=meta, keep=1,
                               centers=(from_float32(centers[s:s + c], dtype), from_float32(momentum[s:s + c], dtype)),
                               bank_dtype=dtype)
    return path


@pytest.mark.parametrize("saved", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("wanted", ["float32", "float16", "bfloat16"])
def test_centers_load_into_any_bank_dtype(tmp_path, saved, wanted):
    rng = np.random.default_rng(0)
    w, m = rng.standard_normal((23, 4)).astype(np.float32), rng.standard_normal((23, 4)).astype(np.float32)
    path = save_world(str(tmp_path), w, m, 2, saved)
    meta = json.load(open(path))
    assert meta["bank_dtype"] == saved
    assert np.load(tmp_path / "model-0001.centers/rank0.weight.npy").dtype == \
        {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[saved]
    ckpt = checkpoint.load(path)
    for start, count in (shard_range(23, 3, k) for k in range(3)):     # re-shard 2 -> 3 on the way
        got_w, got_m = ckpt.centers(start, count, wanted)
        # The saved values, converted once from the saved dtype to the wanted one.
        want_w = from_float32(to_float32(from_float32(w, saved), saved), wanted)[start:start + count]
        want_m = from_float32(to_float32(from_float32(m, saved), saved), wanted)[start:start + count]
        assert got_w.dtype == want_w.dtype and np.array_equal(got_w, want_w) and np.array_equal(got_m, want_m)


def test_manifest_without_dtype_is_float32_and_a_bad_one_is_refused(tmp_path):
    w = np.ones((5, 2), np.float32)
    path = save_world(str(tmp_path), w, w, 1, "float32")
    meta = json.load(open(path))
    del meta["bank_dtype"]                               # a checkpoint from before compact banks
    assert np.array_equal(checkpoint.Checkpoint(path, meta).centers(0, 5, "float16")[0], w.astype(np.float16))
    meta["bank_dtype"] = "int4"
    with pytest.raises(CheckpointError, match="unknown bank_dtype 'int4'"):
        checkpoint.Checkpoint(path, meta).centers(0, 5)
    meta["bank_dtype"] = "float16"                       # says float16, holds float32
    with pytest.raises(CheckpointError, match="holds float32 .* the manifest says float16"):
        checkpoint.Checkpoint(path, meta).centers(0, 5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_exact_resume_with_a_compact_bank(tmp_path, dtype):
    cases.check_exact_resume(tmp_path / "full", tmp_path / "split", comm="local", bank_dtype=dtype,
                             memory_bank="host" if dtype == "bfloat16" else "device")


def test_resume_a_float32_checkpoint_with_a_float16_bank_and_back(tmp_path):
    out = tmp_path / "run"
    cases.run(out, 2, checkpoint_steps=2)
    losses = cases.run(out, 4, checkpoint_steps=2, resume="1", bank_dtype="float16")
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    meta = json.load(open(checkpoint.latest(str(out))))
    assert meta["bank_dtype"] == "float16" and meta["step"] == 4
    w16 = np.load(out / "model-0004.centers/rank0.weight.npy")
    assert w16.dtype == np.float16
    losses = cases.run(out, 6, checkpoint_steps=2, resume="1", bank_dtype="float32")
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    w32 = np.load(out / "model-0006.centers/rank0.weight.npy")
    assert w32.dtype == np.float32
