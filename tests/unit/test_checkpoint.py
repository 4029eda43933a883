import json
import os

import mxnet as mx
import numpy as np
import pytest

from partial_fc import checkpoint
from partial_fc.checkpoint import CheckpointError
from partial_fc.head.sharding import shard_range


class FakeComm:
    """One rank of a world of `size`, for writing every rank's part from one process."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def barrier(self, name):
        pass

    def allgather(self, x, name):
        return x  # the save's "did every rank write its part" vote: this process writes every part


def _save_world(out, step, centers, momentum, W, keep=3):
    sym = mx.sym.FullyConnected(mx.sym.var("data"), num_hidden=4, flatten=True, name="fc1")
    arg = {"fc1_weight": mx.nd.ones((4, 3)) * step, "fc1_bias": mx.nd.zeros(4)}
    meta = dict(network="mbf", num_classes=len(centers), embedding_size=centers.shape[1])
    # Rank 0 last: it writes the manifest once every shard is in place (the barrier's job in a real run).
    for k in list(range(1, W)) + [0]:
        s, c = shard_range(len(centers), W, k)
        path = checkpoint.save(out, step, comm=FakeComm(k, W), symbol=sym, arg_params=arg, aux_params={},
                               save_states=lambda p: open(p, "wb").write(b"states"),
                               centers=(centers[s:s + c], momentum[s:s + c]), meta=meta,
                               keep=keep)
    return path


@pytest.mark.parametrize("W_old, W_new", [(2, 1), (2, 3), (3, 2), (1, 4)])
def test_centers_reshard_to_any_world_size(tmp_path, W_old, W_new):
    C, D = 23, 5
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((C, D)).astype(np.float32)
    momentum = rng.standard_normal((C, D)).astype(np.float32)
    path = _save_world(str(tmp_path), 7, centers, momentum, W_old)
    ckpt = checkpoint.load(path)
    assert ckpt.step == 7 and ckpt.meta["world_size"] == W_old
    for k in range(W_new):
        s, c = shard_range(C, W_new, k)
        w, m = ckpt.centers(s, c)
        np.testing.assert_array_equal(w, centers[s:s + c])
        np.testing.assert_array_equal(m, momentum[s:s + c])


def test_backbone_files_load_with_mxnet_conventions(tmp_path):
    centers = np.zeros((6, 2), np.float32)
    _save_world(str(tmp_path), 12, centers, centers, 2)
    sym, arg, aux = mx.model.load_checkpoint(str(tmp_path / "model"), 12)
    assert sym.list_outputs() == ["fc1_output"]
    np.testing.assert_array_equal(arg["fc1_weight"].asnumpy(), np.full((4, 3), 12.0))
    arg2, aux2 = checkpoint.load(str(tmp_path / "model-0012.json")).backbone()
    assert set(arg2) == {"fc1_weight", "fc1_bias"} and aux2 == {}


def test_latest_keep_and_no_temporary_files(tmp_path):
    out = str(tmp_path)
    centers = np.zeros((6, 2), np.float32)
    assert checkpoint.latest(out) is None
    for step in (2, 4, 6, 8):
        _save_world(out, step, centers, centers, 2, keep=2)
    assert checkpoint.latest(out).endswith("model-0008.json")
    names = sorted(os.listdir(out))
    assert [n for n in names if n.endswith(".json")] == ["model-0006.json", "model-0008.json", "model-symbol.json"]
    assert not any(".tmp-" in n for n in names)
    assert not os.path.exists(tmp_path / "model-0004.params") and not os.path.exists(tmp_path / "model-0004.centers")


def test_shards_without_a_manifest_do_not_count(tmp_path):
    out = str(tmp_path)
    centers = np.zeros((6, 2), np.float32)
    _save_world(out, 2, centers, centers, 1)
    # A save of step 4 that died before rank 0's manifest: its files exist, it must be ignored.
    os.makedirs(tmp_path / "model-0004.centers")
    (tmp_path / "model-0004.centers" / "rank0.weight.npy").write_bytes(b"partial")
    (tmp_path / "model-0004.params").write_bytes(b"partial")
    assert checkpoint.latest(out).endswith("model-0002.json")


def test_incompatible_and_broken_checkpoints_are_named(tmp_path):
    centers = np.zeros((6, 2), np.float32)
    path = _save_world(str(tmp_path), 3, centers, centers, 1)
    ckpt = checkpoint.load(path)
    checkpoint.check_compatible(ckpt, network="mbf", num_classes=6, embedding_size=2)
    with pytest.raises(CheckpointError, match="model-0003.json: was trained with network='mbf', this run has 'r50'"):
        checkpoint.check_compatible(ckpt, network="r50", num_classes=6, embedding_size=2)
    with pytest.raises(CheckpointError, match="num_classes=6, this run has 7"):
        checkpoint.check_compatible(ckpt, network="mbf", num_classes=7, embedding_size=2)
    with pytest.raises(CheckpointError, match="embedding_size=2, this run has 512"):
        checkpoint.check_compatible(ckpt, network="mbf", num_classes=6, embedding_size=512)
    os.remove(tmp_path / "model-0003.centers" / "rank0.momentum.npy")
    with pytest.raises(CheckpointError, match="rank0.momentum.npy, which is missing"):
        ckpt.centers(0, 6)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="junk.json: not a checkpoint manifest"):
        checkpoint.load(str(tmp_path / "junk.json"))
    (tmp_path / "other.json").write_text(json.dumps({"step": 1}))
    with pytest.raises(CheckpointError, match="other.json: not a checkpoint manifest \\(missing network"):
        checkpoint.load(str(tmp_path / "other.json"))
