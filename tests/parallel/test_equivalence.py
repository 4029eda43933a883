"""The distributed Partial FC step equals a dense, single-process margin softmax (docs/design.md §5).

Every rank draws the same full problem (features of all N rows, labels, all C centers and momentum),
runs the operator on its own batch rows and class shard, and compares loss, feature gradients, sampled
center gradients, and centers + momentum after one update with tests/reference.py in float64.
"""
import mxnet as mx
import numpy as np
import pytest

from partial_fc.config import LOSSES
from partial_fc.head.margin import Margin
from partial_fc.head.memory_bank import MemoryBank
from partial_fc.head.precision import from_float32, to_float32
from partial_fc.head.operator import PartialFC
from partial_fc.head.sampler import CenterSampler
from partial_fc.head.sharding import shard_range
from support.reference import assert_close, dense, sgd_momentum

C, D, B = 103, 16, 5          # 103 classes split unevenly over 2 and 3 ranks
S_SCALE, LR, MU, WD = 64.0, 0.1, 0.9, 5e-4
SEED, STEP = 11, 3


def problem(world):
    rng = np.random.default_rng(2024)
    F = rng.normal(size=(B * world, D)).astype(np.float32)
    Y = rng.integers(0, C, size=B * world, dtype=np.int64)
    Wc = (rng.normal(size=(C, D)) * 0.1).astype(np.float32)
    mom = (rng.normal(size=(C, D)) * 0.01).astype(np.float32)  # non-zero: the update must carry it
    return F, Y, Wc, mom


def sampled_classes(Y, world, rate):
    """Global ids of every rank's sampled centers, rebuilt locally from the deterministic sampler."""
    ids = []
    for k in range(world):
        start, count = shard_range(C, world, k)
        ids.append(start + CenterSampler(start, count, C, rate, seed=SEED, rank=k).sample(Y, STEP).index)
    return np.concatenate(ids)


def assert_matches_dense(out, grad, F, Y, Wc, rate, margins, scale, rows, start, world):
    """Loss, this rank's feature gradient and its sampled centers' gradient `grad` against the dense run over
    every rank's sampled classes; returns (the dense result, which of its rows are this rank's)."""
    classes = sampled_classes(Y, world, rate)
    ref = dense(F, Y, Wc[classes], classes, margins, scale)
    assert_close(out.loss, ref.loss, what="loss")
    assert_close(out.feature_grad.asnumpy(), ref.dF[rows], what="feature gradient")
    mine = np.isin(classes, start + out.sample.index)
    assert_close(grad, ref.dW[mine], what="center gradient")
    return ref, mine


# s = 64 (the default) makes the softmax nearly one-hot on random data; s = 4 spreads it over every class
# so that all entries of the gradients carry weight in the comparison.
@pytest.mark.parametrize("scale", [64.0, 4.0])
@pytest.mark.parametrize("storage", ["device", "host"])
@pytest.mark.parametrize("rate", [1.0, 0.3])
@pytest.mark.parametrize("loss", ["arcface", "cosface"])
def test_step_equals_dense_reference(comm, loss, rate, storage, scale):
    W_, k = comm.size, comm.rank
    F, Y, Wc, mom = problem(W_)
    margins = LOSSES[loss]
    start, count = shard_range(C, W_, k)
    bank = MemoryBank(Wc[start:start + count], mom[start:start + count], storage=storage, momentum=MU, wd=WD)
    op = PartialFC(comm, C, D, Margin(scale, *margins), rate, bank=bank, seed=SEED)

    rows = slice(k * B, (k + 1) * B)
    out = op.forward_backward(mx.nd.array(F[rows]), Y[rows], STEP)
    center_grad = out.center_grad.asnumpy()   # before update(), which forms and applies it chunk by chunk
    op.update(out, LR)

    classes = sampled_classes(Y, W_, rate)
    if rate == 1.0:
        assert np.array_equal(classes, np.arange(C))
    ref = dense(F, Y, Wc[classes], classes, margins, scale)

    assert_close(out.loss, ref.loss, what="loss")
    assert_close(out.feature_grad.asnumpy(), ref.dF[rows], what="feature gradient")
    mine = np.isin(classes, start + out.sample.index)
    assert mine.sum() == out.sample.index.size
    assert_close(center_grad, ref.dW[mine], what="center gradient")

    w_ref, m_ref = Wc.astype(np.float64), mom.astype(np.float64)
    w_ref[classes], m_ref[classes] = sgd_momentum(w_ref[classes], m_ref[classes], ref.dW, LR, MU, WD)
    w_new, m_new = bank.numpy()
    assert_close(w_new, w_ref[start:start + count], what="centers after update")
    assert_close(m_new, m_ref[start:start + count], what="momentum after update")
    # Rows that were not sampled are untouched, bit for bit.
    untouched = np.setdiff1d(np.arange(count), out.sample.index)
    assert np.array_equal(w_new[untouched], Wc[start + untouched])
    assert np.array_equal(m_new[untouched], mom[start + untouched])


def test_world_size_is_what_the_launcher_started(comm, request):
    """Guards against N independent one-process worlds passing every test (e.g. a mismatched MPI)."""
    expected = request.config.getoption("world_size")
    if expected is None:
        pytest.skip("run with --world-size N to check the launcher's world")
    assert comm.size == expected


def test_mean_loss_scaling_is_independent_of_world_size(comm):
    """The loss reported on every rank is the mean over the global batch, the same number on all ranks."""
    F, Y, Wc, _ = problem(comm.size)
    start, count = shard_range(C, comm.size, comm.rank)
    op = PartialFC(comm, C, D, Margin(S_SCALE, *LOSSES["arcface"]), 1.0,
                   bank=MemoryBank(Wc[start:start + count]), seed=SEED)
    rows = slice(comm.rank * B, (comm.rank + 1) * B)
    out = op.forward_backward(mx.nd.array(F[rows]), Y[rows], STEP)
    losses = comm.allgather(mx.nd.array([out.loss], dtype="float64"), "test.losses").asnumpy()
    assert np.all(losses == losses[0])
    assert_close(out.loss, dense(F, Y, Wc, np.arange(C), LOSSES["arcface"], S_SCALE).loss)


def test_label_outside_all_shards_fails_on_every_rank(comm):
    """One rank's bad label must raise on all ranks (checked after the allgather), not hang the others."""
    F, Y, Wc, _ = problem(comm.size)
    start, count = shard_range(C, comm.size, comm.rank)
    op = PartialFC(comm, C, D, Margin(), 0.5, bank=MemoryBank(Wc[start:start + count]))
    labels = Y[:B].copy()
    if comm.rank == comm.size - 1:
        labels[0] = C + 7
    with pytest.raises(ValueError, match=f"label {C + 7} is outside"):
        op.forward_backward(mx.nd.array(F[:B]), labels, 0)


def test_many_steps_keep_matching(comm):
    """Three consecutive steps at r = 0.3 (state carried in the bank) still equal the dense run."""
    F, Y, Wc, mom = problem(comm.size)
    margins = LOSSES["arcface"]
    start, count = shard_range(C, comm.size, comm.rank)
    bank = MemoryBank(Wc[start:start + count], mom[start:start + count], momentum=MU, wd=WD)
    op = PartialFC(comm, C, D, Margin(S_SCALE, *margins), 0.3, bank=bank, seed=SEED)
    rows = slice(comm.rank * B, (comm.rank + 1) * B)
    w_ref, m_ref = Wc.astype(np.float64), mom.astype(np.float64)
    for step in range(3):
        out = op.forward_backward(mx.nd.array(F[rows]), Y[rows], step)
        op.update(out, LR)
        ids = np.concatenate([shard_range(C, comm.size, r)[0] + CenterSampler(
            *shard_range(C, comm.size, r), C, 0.3, seed=SEED, rank=r).sample(Y, step).index
            for r in range(comm.size)])
        ref = dense(F, Y, w_ref[ids], ids, margins, S_SCALE)
        # The loss is log(sum exp) - (z_y - M) over logits of size s: float32 pins it to about 1e-7 * s
        # absolutely, whatever its own size (the steps drive it down to ~1e-6 here).
        np.testing.assert_allclose(out.loss, ref.loss, rtol=1e-5, atol=1e-6 * S_SCALE, err_msg=f"loss at step {step}")
        w_ref[ids], m_ref[ids] = sgd_momentum(w_ref[ids], m_ref[ids], ref.dW, LR, MU, WD)
    assert_close(bank.numpy()[0], w_ref[start:start + count], what="centers after 3 steps")


@pytest.mark.parametrize("storage", ["device", "host"])
@pytest.mark.parametrize("rate", [1.0, 0.3])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_chunked_step_with_each_bank_dtype_equals_dense_reference(comm, dtype, rate, storage):
    """Sampled rows in chunks of 4 (several per shard, a ragged last one) and each storage dtype. The
    reference sees the centers as the bank stores them (rounded for compact dtypes); the update must be
    float32 math on the stored rows rounded once (within 1 ulp for MXNet's own operation order)."""
    W_, k = comm.size, comm.rank
    F, Y, Wc, mom = problem(W_)
    Wc, mom = to_float32(from_float32(Wc, dtype), dtype), to_float32(from_float32(mom, dtype), dtype)
    margins = LOSSES["arcface"]
    start, count = shard_range(C, W_, k)
    bank = MemoryBank(Wc[start:start + count], mom[start:start + count], storage=storage, momentum=MU, wd=WD,
                      dtype=dtype)
    op = PartialFC(comm, C, D, Margin(4.0, *margins), rate, bank=bank, seed=SEED, chunk_rows=4)
    rows = slice(k * B, (k + 1) * B)
    out = op.forward_backward(mx.nd.array(F[rows]), Y[rows], STEP)
    assert len(op._chunks(out.sample.index.size)) > 1
    grad = out.center_grad.asnumpy()
    op.update(out, LR)

    ref, mine = assert_matches_dense(out, grad, F, Y, Wc, rate, margins, 4.0, rows, start, W_)

    idx = out.sample.index
    w_new, m_new = bank.numpy_float32()
    if dtype == "float32":
        w_ref, m_ref = sgd_momentum(Wc[start + idx].astype(np.float64), mom[start + idx].astype(np.float64),
                                    ref.dW[mine], LR, MU, WD)
        assert_close(w_new[idx], w_ref, what="centers after update")
        assert_close(m_new[idx], m_ref, what="momentum after update")
    else:
        w, m = Wc[start + idx], mom[start + idx]
        m = MU * m - np.float32(LR) * (grad + np.float32(WD) * w)
        for got, want in ((w_new[idx], w + m), (m_new[idx], m)):
            want = to_float32(from_float32(want, dtype), dtype)
            ulp = np.abs(want) * 2.0 ** (-10 if dtype == "float16" else -7)
            assert np.all(np.abs(got - want) <= ulp + 1e-7)
            assert np.mean(got == want) > 0.95
    untouched = np.setdiff1d(np.arange(count), idx)
    assert np.array_equal(w_new[untouched], Wc[start + untouched])
    assert np.array_equal(m_new[untouched], mom[start + untouched])


@pytest.mark.parametrize("rate", [1.0, 0.3])
def test_shards_without_any_target_still_match(comm, rate):
    """Every label in the first shard: the other ranks' logits hold no target entry at all (a case the
    target bookkeeping must skip), yet loss, gradients and the update still equal the dense run."""
    W_, k = comm.size, comm.rank
    F, _, Wc, mom = problem(W_)
    first, first_count = shard_range(C, W_, 0)
    Y = first + np.random.default_rng(5).integers(0, first_count, size=B * W_, dtype=np.int64)
    margins = LOSSES["arcface"]
    start, count = shard_range(C, W_, k)
    bank = MemoryBank(Wc[start:start + count], mom[start:start + count], momentum=MU, wd=WD)
    op = PartialFC(comm, C, D, Margin(4.0, *margins), rate, bank=bank, seed=SEED, chunk_rows=4)
    rows = slice(k * B, (k + 1) * B)
    out = op.forward_backward(mx.nd.array(F[rows]), Y[rows], STEP)
    if k > 0:
        assert np.all(out.sample.labels == -1)
    grad = out.center_grad.asnumpy()
    op.update(out, LR)

    ref, mine = assert_matches_dense(out, grad, F, Y, Wc, rate, margins, 4.0, rows, start, W_)
    w_ref, m_ref = sgd_momentum(Wc[start + out.sample.index].astype(np.float64),
                                mom[start + out.sample.index].astype(np.float64), ref.dW[mine], LR, MU, WD)
    assert_close(bank.numpy()[0][out.sample.index], w_ref, what="centers after update")
    assert_close(bank.numpy()[1][out.sample.index], m_ref, what="momentum after update")
