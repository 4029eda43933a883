"""The row-chunked operator and the compact (float16 / bfloat16) banks against the dense reference.

World size 1 (LocalComm): the operator's own shard is the whole class set. Chunks are forced small
(chunk_rows) so that every step runs over several of them, including a ragged last one.

float32 storage, chunked: loss, feature and center gradients and the bank after one update agree with the
float64 reference at 1e-5 relative, like the unchunked operator. Compact storage: the reference is computed
on the same rounded centers the bank holds (widened to float32 exactly), and the update must equal float32
SGD math on those rows rounded ONCE to the storage dtype.
"""
import contextlib

import mxnet as mx
import numpy as np
import pytest

from partial_fc.dist import LocalComm
from partial_fc.head import native
from partial_fc.config import LOSSES
from partial_fc.head.margin import Margin
from partial_fc.head.memory_bank import MemoryBank
from partial_fc.head.memory_plan import chunk_rows_for
from partial_fc.head.operator import PartialFC
from partial_fc.head.precision import from_float32, to_float32
from support.reference import assert_close, dense, sgd_momentum

C, D, N = 61, 12, 9
LR, MU, WD, SEED, STEP = 0.1, 0.9, 5e-4, 5, 2


def problem():
    rng = np.random.default_rng(7)
    F = rng.normal(size=(N, D)).astype(np.float32)
    Y = rng.integers(0, C, size=N, dtype=np.int64)
    Wc = (rng.normal(size=(C, D)) * 0.1).astype(np.float32)
    mom = (rng.normal(size=(C, D)) * 0.01).astype(np.float32)
    return F, Y, Wc, mom


def run_step(rate, storage, dtype, chunk_rows, loss="arcface", scale=4.0):
    F, Y, Wc, mom = problem()
    bank = MemoryBank(Wc, mom, storage=storage, momentum=MU, wd=WD, dtype=dtype)
    w0, m0 = bank.numpy_float32()          # the centers as stored (rounded for compact dtypes)
    op = PartialFC(LocalComm(), C, D, Margin(scale, *LOSSES[loss]), rate, bank=bank, seed=SEED,
                   chunk_rows=chunk_rows)
    out = op.forward_backward(mx.nd.array(F), Y, STEP)
    grad = out.center_grad.asnumpy()       # before update: a chunked step applies it chunk by chunk
    op.update(out, LR)
    return dict(F=F, Y=Y, w0=w0, m0=m0, out=out, grad=grad, bank=bank, op=op)


@pytest.mark.parametrize("storage, row_update", [("device", "native"), ("device", "stock"), ("host", None)])
@pytest.mark.parametrize("rate", [1.0, 0.4])
@pytest.mark.parametrize("loss", ["arcface", "cosface"])
def test_chunked_float32_step_equals_dense_reference(loss, rate, storage, row_update, monkeypatch):
    """A float32 device bank updates sampled rows with the native operator; GPU banks, and a CPU bank whose
    library is missing, with stock operators. Both must match the reference."""
    if row_update == "native":
        assert native.native_row_update(mx.cpu()) is not None, "the native row update is not built"
    elif row_update == "stock":
        monkeypatch.setattr(native, "_native", {"cpu": None})
    r = run_step(rate, storage, "float32", chunk_rows=7, loss=loss)
    out, idx = r["out"], r["out"].sample.index
    assert len(r["op"]._chunks(idx.size)) > 2
    ref = dense(r["F"], r["Y"], r["w0"][idx], idx, LOSSES[loss], 4.0)
    assert_close(out.loss, ref.loss, what="loss")
    assert_close(out.feature_grad.asnumpy(), ref.dF, what="feature gradient")
    assert_close(r["grad"], ref.dW, what="center gradient")
    w_ref, m_ref = r["w0"].astype(np.float64), r["m0"].astype(np.float64)
    w_ref[idx], m_ref[idx] = sgd_momentum(w_ref[idx], m_ref[idx], ref.dW, LR, MU, WD)
    w_new, m_new = r["bank"].numpy()
    assert_close(w_new, w_ref, what="centers after update")
    assert_close(m_new, m_ref, what="momentum after update")
    untouched = np.setdiff1d(np.arange(C), idx)
    assert np.array_equal(w_new[untouched], r["w0"][untouched])


@pytest.mark.parametrize("storage", ["device", "host"])
@pytest.mark.parametrize("rate", [1.0, 0.4])
def test_chunked_and_single_chunk_float32_agree(rate, storage):
    a = run_step(rate, storage, "float32", chunk_rows=5)
    b = run_step(rate, storage, "float32", chunk_rows=None)   # the default: one chunk at this size
    assert len(b["op"]._chunks(b["out"].sample.index.size)) == 1
    assert_close(a["out"].loss, b["out"].loss, what="loss")
    assert_close(a["out"].feature_grad.asnumpy(), b["out"].feature_grad.asnumpy(), what="feature gradient")
    assert_close(a["grad"], b["grad"], what="center gradient")
    assert_close(a["bank"].numpy()[0], b["bank"].numpy()[0], what="centers after update")


def _ulps(a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    """Distance in storage units in the last place between two storage arrays of the same sign."""
    bits = (a.view(np.uint16) if dtype == "float16" else a).astype(np.int64)
    other = (b.view(np.uint16) if dtype == "float16" else b).astype(np.int64)
    return np.abs(bits - other)


@pytest.mark.parametrize("chunk_rows", [4, None])
@pytest.mark.parametrize("storage", ["device", "host"])
@pytest.mark.parametrize("rate", [1.0, 0.4])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_compact_bank_step_equals_reference_on_rounded_centers(dtype, rate, storage, chunk_rows):
    r = run_step(rate, storage, dtype, chunk_rows=chunk_rows)
    out, idx, bank = r["out"], r["out"].sample.index, r["bank"]
    # The centers really are stored rounded (else this test would compare float32 with float32).
    assert not np.array_equal(r["w0"], problem()[2])
    ref = dense(r["F"], r["Y"], r["w0"][idx], idx, LOSSES["arcface"], 4.0)
    assert_close(out.loss, ref.loss, what="loss")
    assert_close(out.feature_grad.asnumpy(), ref.dF, what="feature gradient")
    assert_close(r["grad"], ref.dW, what="center gradient")

    # The update: float32 math on the widened rows with the operator's own gradient, rounded once.
    w, m, g = r["w0"][idx], r["m0"][idx], r["grad"]
    m = MU * m - np.float32(LR) * (g + np.float32(WD) * w)
    w = w + m
    w_new, m_new = bank.numpy()
    assert w_new.dtype == (np.float16 if dtype == "float16" else np.uint16)
    want_w, want_m = from_float32(w, dtype), from_float32(m, dtype)
    if storage == "host":   # the same numpy float32 formula: bit for bit
        assert np.array_equal(w_new[idx], want_w) and np.array_equal(m_new[idx], want_m)
    else:                   # MXNet's sgd_mom_update orders the float32 terms its own way: at most 1 ulp
        assert _ulps(w_new[idx], want_w, dtype).max() <= 1
        assert _ulps(m_new[idx], want_m, dtype).max() <= 1
        assert np.mean(w_new[idx] == want_w) > 0.95
    # ... and the centers moved by what float64 SGD says, to storage precision.
    w_ref, _ = sgd_momentum(r["w0"][idx].astype(np.float64), r["m0"][idx].astype(np.float64), ref.dW, LR, MU, WD)
    np.testing.assert_allclose(to_float32(w_new[idx], dtype), w_ref, rtol=2 ** -7, atol=1e-6)
    untouched = np.setdiff1d(np.arange(C), idx)
    assert np.array_equal(to_float32(w_new[untouched], dtype), r["w0"][untouched])
    assert np.array_equal(to_float32(m_new[untouched], dtype), r["m0"][untouched])


def test_center_grad_of_a_chunked_step_is_gone_after_update():
    F, Y, Wc, _ = problem()
    op = PartialFC(LocalComm(), C, D, Margin(), 0.5, bank=MemoryBank(Wc), chunk_rows=8)
    out = op.forward_backward(mx.nd.array(F), Y, 0)
    op.update(out, LR)
    with pytest.raises(RuntimeError, match="before update"):
        out.center_grad
    with pytest.raises(RuntimeError, match="already applied"):
        op.update(out, LR)


class _Recorder:
    """A clock that only records the phases it is asked to time, in order."""

    def __init__(self):
        self.names = []

    @contextlib.contextmanager
    def phase(self, name):
        self.names.append(name)
        yield


@pytest.mark.parametrize("dtype, gathers, matmuls", [("float32", 1, 1 + 1 + 4), ("float16", 3 * 4, 3 * 4)])
def test_clock_sees_every_phase_and_none_changes_nothing(dtype, gathers, matmuls):
    """A float32 device bank gathers the sampled rows once a step: the cosines and dF are one product each,
    the update goes by chunk. A compact bank gathers each of the 4 chunks in each pass (cosines, dF, update).
    The clock changes no result."""
    F, Y, Wc, _ = problem()
    results, recorder = [], _Recorder()
    for clock in (None, recorder):
        op = PartialFC(LocalComm(), C, D, Margin(), 0.5, bank=MemoryBank(Wc, dtype=dtype), chunk_rows=8)
        op.clock = clock
        out = op.forward_backward(mx.nd.array(F), Y, 0)
        op.update(out, LR)
        results.append((out.loss, out.feature_grad.asnumpy(), op.bank.numpy()[0]))
    names = recorder.names
    assert set(names) == {"exchange", "sample", "gather", "normalise", "matmul", "softmax", "scatter", "update"}
    assert names[-1] == "update" and names.count("gather") == gathers
    assert names.count("matmul") == matmuls
    assert results[0][0] == results[1][0]
    assert np.array_equal(results[0][1], results[1][1]) and np.array_equal(results[0][2], results[1][2])


def test_chunk_rule():
    assert chunk_rows_for(512, "float32", 8192) == 8192                # 4 M elements: one piece
    assert chunk_rows_for(512, "float32", 1000) == 1000
    assert chunk_rows_for(512, "float32", 100_000) == 2048             # above 2^22 elements: 2^20-element chunks
    assert chunk_rows_for(512, "float16", 1000) == 2048                # compact banks always chunk
    with pytest.raises(ValueError, match="bank_dtype"):
        PartialFC(LocalComm(), C, D, Margin(), 1.0, bank=MemoryBank(problem()[2]), bank_dtype="float16")


def test_two_outstanding_steps_do_not_share_buffers():
    """The operator hands its large arrays from one step to the next only once update() has applied a step:
    a second forward_backward before the first step's update must not write into the first step's arrays."""
    F, Y, Wc, mom = problem()

    def op():
        return PartialFC(LocalComm(), C, D, Margin(4.0, *LOSSES["arcface"]), 0.5,
                         bank=MemoryBank(Wc, mom, momentum=MU, wd=WD), seed=SEED, chunk_rows=8)

    alone = op()
    ref = alone.forward_backward(mx.nd.array(F), Y, 0)
    ref_grad = ref.center_grad.asnumpy()
    alone.update(ref, LR)
    for _ in range(2):  # the second round runs on arrays handed back by the first round's update
        both = op()
        first = both.forward_backward(mx.nd.array(F), Y, 0)
        second = both.forward_backward(mx.nd.array(F[::-1].copy()), Y[::-1].copy(), 1)
        assert first.loss == ref.loss
        np.testing.assert_array_equal(first.feature_grad.asnumpy(), ref.feature_grad.asnumpy())
        np.testing.assert_array_equal(first.center_grad.asnumpy(), ref_grad)
        both.update(first, LR)
        np.testing.assert_array_equal(both.bank.numpy()[0], alone.bank.numpy()[0])
        both.update(second, LR)
