"""Compact storage of the memory bank: rounding, sizes, chunked creation, row access on both storages."""
import subprocess
import sys
import tracemalloc

import mxnet as mx
import numpy as np
import pytest

from partial_fc.head import kernels, memory_bank, native
from partial_fc.head.memory_bank import MemoryBank
from partial_fc.head.memory_plan import bank_bytes, format_memory_plan, memory_plan
from partial_fc.head.precision import convert_rows, from_float32, to_float32
from partial_fc.head.sampler import Sample


def bf16_oracle(x: np.ndarray) -> np.ndarray:
    """Nearest bfloat16 by comparing both neighbours in float64 (ties: even last bit); no bit tricks. The
    neighbour past the largest finite value is inf, which IEEE rounding treats as 2^128 for the distance."""
    def value(b):
        if b & 0x7FFF == 0x7F80:
            return -(2.0 ** 128) if b & 0x8000 else 2.0 ** 128
        return float((np.uint32(b) << np.uint32(16)).view(np.float32))

    out = np.empty(x.shape, np.uint16)
    for i, v in enumerate(x):
        if np.isnan(v):
            out[i] = 0xFFC0 if np.signbit(v) else 0x7FC0
            continue
        lo = int(np.float32(v).view(np.uint32) >> 16)                   # truncation: toward zero
        if np.isinf(v):
            out[i] = lo
            continue
        d_lo, d_hi = abs(float(v) - value(lo)), abs(value(lo + 1) - float(v))
        out[i] = lo if d_lo < d_hi or (d_lo == d_hi and lo % 2 == 0) else lo + 1
    return out


def test_bfloat16_rounds_to_nearest_even_and_keeps_specials():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(3000) * 10.0 ** rng.integers(-40, 38, 3000)).astype(np.float32)
    one = np.float32(1.0).view(np.uint32)
    ties = ((np.arange(64, dtype=np.uint32) << 16) | 0x8000) + one          # exactly halfway cases
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.finfo(np.float32).max, -np.finfo(np.float32).max,
                         1e-45, -1e-40, 3.3895314e38, 3.3961776e38], np.float32)
    x = np.concatenate([x, ties.view(np.float32), specials])
    got = from_float32(x, "bfloat16")
    assert np.array_equal(got, bf16_oracle(x))
    # Ties go to even: 1 + 2^-8 (halfway between 1 and the next bf16) rounds down, 1 + 3*2^-8 up.
    assert to_float32(from_float32(np.float32([1 + 2 ** -8, 1 + 3 * 2 ** -8]), "bfloat16"), "bfloat16").tolist() \
        == [1.0, 1 + 2 ** -6]
    assert np.isposinf(to_float32(from_float32(np.float32([3.4e38]), "bfloat16"), "bfloat16")[0])  # overflow
    nan = np.array([np.nan, -np.nan], np.float32)
    nan[0] = np.uint32(0x7F800001).view(np.float32)    # a NaN whose payload the carry would turn into inf
    assert np.isnan(to_float32(from_float32(nan, "bfloat16"), "bfloat16")).all()
    # Widening is exact: every bf16 value survives a round trip.
    bits = np.arange(0, 1 << 16, dtype=np.uint16)
    finite = np.isfinite(to_float32(bits, "bfloat16"))
    assert np.array_equal(from_float32(to_float32(bits, "bfloat16"), "bfloat16")[finite], bits[finite])


def test_float16_is_numpys_rounding():
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32) * 1e3
    assert np.array_equal(from_float32(x, "float16"), x.astype(np.float16))


@pytest.mark.parametrize("storage", ["device", "host"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_bank_bytes_is_the_real_size(storage, dtype):
    bank = MemoryBank.create(37, 24, storage=storage, dtype=dtype)
    w, m = bank.numpy()
    assert bank_bytes(37, 24, dtype) == w.nbytes + m.nbytes == bank.nbytes
    assert bank_bytes(10_000_000 // 2, 512, "float16") == 10_240_000_000   # the 10 M-class shard at W = 2


@pytest.mark.parametrize("storage", ["device", "host"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_create_in_chunks_equals_one_whole_draw_rounded(storage, dtype, monkeypatch):
    monkeypatch.setattr(memory_bank, "CONVERT_ROWS", 7)   # several chunks and a ragged last one
    bank = MemoryBank.create(30, 5, seed=3, rank=1, std=0.01, storage=storage, dtype=dtype)
    whole = np.random.default_rng([3, 1, 0x6261_6e6b]).standard_normal(size=(30, 5), dtype=np.float32) * np.float32(0.01)
    w, m = bank.numpy()
    assert np.array_equal(w, from_float32(whole, dtype)) and not m.any()


def test_create_never_holds_the_shard_in_float32(monkeypatch):
    monkeypatch.setattr(memory_bank, "CONVERT_ROWS", 256)
    count, dim = 40_000, 64
    tracemalloc.start()
    bank = MemoryBank.create(count, dim, storage="host", dtype="float16")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert bank.nbytes == bank_bytes(count, dim, "float16")
    # The bank itself plus a few chunks; a whole float32 draw would add count * dim * 4 = 10 MB.
    assert peak < bank.nbytes + count * dim * 4 // 4


@pytest.mark.parametrize("storage", ["device", "host"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_rows_are_widened_exactly_and_written_back_rounded(storage, dtype):
    rng = np.random.default_rng(2)
    w32 = rng.standard_normal((20, 6)).astype(np.float32)
    bank = MemoryBank(w32, storage=storage, dtype=dtype, momentum=0.0, wd=0.0)
    stored = from_float32(w32, dtype)
    sample = Sample(index=np.array([1, 4, 5, 11, 19]), labels=np.zeros(0, np.int64), full=False)
    got = bank.gather_rows(sample, 1, 4)
    assert got.dtype == np.float32
    assert np.array_equal(got.asnumpy(), to_float32(stored[[4, 5, 11]], dtype))
    # lr 1, no momentum, no decay: w <- w - g; with g = w - target the rows become `target`, rounded once.
    target = rng.standard_normal((3, 6)).astype(np.float32)
    bank.update_rows(sample, 1, 4, mx.nd.array(to_float32(stored[[4, 5, 11]], dtype) - target), 1.0)
    w, _ = bank.numpy()
    expect = stored.copy()
    expect[[4, 5, 11]] = from_float32(to_float32(stored[[4, 5, 11]], dtype)
                                      - (to_float32(stored[[4, 5, 11]], dtype) - target), dtype)
    assert np.array_equal(w, expect)


def _float32_banks(count=50, dim=7, seed=3):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((count, dim)).astype(np.float32)
    m = (rng.standard_normal((count, dim)) * 0.1).astype(np.float32)
    return w, m, [MemoryBank(w, m, momentum=0.9, wd=5e-4) for _ in range(2)]


def test_native_row_update_equals_stock_operators_bit_for_bit(monkeypatch):
    """The in-place operator must compute exactly what sgd_mom_update on gathered copies computes, with or
    without the caller's gathered rows, and touch only the sampled rows."""
    assert native.native_row_update(mx.cpu()) is not None, "the native row update is not built"
    w, m, (in_place, stock) = _float32_banks()
    rng = np.random.default_rng(4)
    sample = Sample(index=np.sort(rng.choice(50, 23, replace=False)), labels=np.zeros(0, np.int64), full=False)
    grads = [mx.nd.array(rng.standard_normal((hi - lo, 7)).astype(np.float32)) for lo, hi in ((0, 10), (10, 23))]
    for step, lr in enumerate((0.1, 0.05)):           # twice: the second step reads momentum the first wrote
        for bank, patch in ((in_place, None), (stock, {"cpu": None})):
            with monkeypatch.context() as mp:
                if patch is not None:
                    mp.setattr(native, "_native", patch)
                for (lo, hi), g in zip(((0, 10), (10, 23)), grads):
                    rows = bank.gather_rows(sample, lo, hi) if step else None
                    bank.update_rows(sample, lo, hi, g, lr, rows=rows)
    wn, mn = in_place.numpy()
    ws, ms = stock.numpy()
    assert np.array_equal(wn, ws) and np.array_equal(mn, ms)
    untouched = np.setdiff1d(np.arange(50), sample.index)
    assert np.array_equal(wn[untouched], w[untouched]) and np.array_equal(mn[untouched], m[untouched])
    assert not np.array_equal(wn[sample.index], w[sample.index])


@pytest.mark.parametrize("full", [False, True])
def test_projected_update_native_equals_stock_and_float64(full, monkeypatch):
    """update_rows(project=True) applies the tangent part of the gradient, g - w (g.w)/(w.w): in the native
    update's pass on a float32 CPU bank, through kernels.tangent elsewhere. Both against float64 math."""
    w, m, (native_bank, stock_bank) = _float32_banks()
    rng = np.random.default_rng(5)
    index = np.arange(50) if full else np.sort(rng.choice(50, 23, replace=False))
    sample = Sample(index=index, labels=np.zeros(0, np.int64), full=full)
    g = rng.standard_normal((index.size, 7)).astype(np.float32)
    native_bank.update_rows(sample, 0, index.size, mx.nd.array(g), 0.1, project=True)
    with monkeypatch.context() as mp:
        mp.setattr(native, "_native", {"cpu": None})
        stock_bank.update_rows(sample, 0, index.size, mx.nd.array(g), 0.1, project=True)
    w64, m64, g64 = w[index].astype(np.float64), m[index].astype(np.float64), g.astype(np.float64)
    t = g64 - w64 * ((g64 * w64).sum(1) / (w64 * w64).sum(1))[:, None]
    assert np.abs((t * w64).sum(1)).max() < 1e-9                 # the reference really is tangent
    mom = 0.9 * m64 - 0.1 * (t + 5e-4 * w64)
    for bank in (native_bank, stock_bank):
        wn, mn = bank.numpy()
        np.testing.assert_allclose(mn[index], mom, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(wn[index], w64 + mom, rtol=1e-5, atol=1e-6)
        untouched = np.setdiff1d(np.arange(50), index)
        assert np.array_equal(wn[untouched], w[untouched])


@pytest.mark.parametrize("storage, dtype", [("device", "float32"), ("host", "float32"), ("device", "float16"),
                                            ("host", "bfloat16")])
def test_gather_gives_the_rows_and_their_inverse_norms(storage, dtype, monkeypatch):
    """gather(sample, out, inv_norms): the sampled rows widened to float32, and 1 / |w| of each. A float32 CPU
    bank takes both in one native pass (pfc_gather_rows); its norms are bit for bit those kernels.inv_row_norms
    computes on the gathered copy (what the operator used before), and the stock path gives the same."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((300, 40)).astype(np.float32)
    bank = MemoryBank(w, storage=storage, dtype=dtype)
    index = np.sort(rng.choice(300, 77, replace=False))
    sample = Sample(index=index, labels=np.zeros(0, np.int64), full=False)
    expect = to_float32(from_float32(w, dtype), dtype)[index] if dtype != "float32" else w[index]
    out = mx.nd.empty((77, 40)) if (storage, dtype) == ("device", "float32") else None
    inv = mx.nd.empty((100,))
    rows = bank.gather(sample, out=out, inv_norms=inv[10:87])  # into a view, as the operator may
    assert np.array_equal(rows.asnumpy(), expect)
    if out is not None:
        assert rows is out
    got = inv.asnumpy()[10:87]
    np.testing.assert_allclose(got, 1 / np.linalg.norm(expect.astype(np.float64), axis=1), rtol=1e-6)
    assert np.array_equal(got, kernels.inv_row_norms(mx.nd.array(expect)).asnumpy())
    if out is not None:
        with monkeypatch.context() as mp:                     # the same call without the native library
            mp.setattr(native, "_native", {"cpu": None})
            stock = mx.nd.empty((77,))
            assert np.array_equal(bank.gather(sample, out=mx.nd.empty((77, 40)), inv_norms=stock).asnumpy(), expect)
        np.testing.assert_allclose(stock.asnumpy(), got, rtol=1e-6)


def test_native_gather_refuses_a_row_outside_the_bank():
    gather = native.native_gather(mx.cpu())
    assert gather is not None, "the native gather is not built"
    weight = mx.nd.ones((10, 4))
    with pytest.raises(mx.base.MXNetError, match="pfc_gather_rows: index 10 outside the bank's 10 rows"):
        gather(weight, mx.nd.array([3, 10], dtype=np.int64), out=(mx.nd.empty((2, 4)), mx.nd.empty((2,))))
        mx.nd.waitall()


def test_native_row_update_loads_after_horovod():
    """horovod.mxnet puts libmxnet's own lib_api symbols in the global scope; the library must still bind to
    its own copy (it once crashed MXNet on load there). A fresh process, so the import order is the trainer's."""
    code = ("import horovod.mxnet, mxnet as mx\n"
            "from partial_fc.head import native\n"
            "op = native.native_row_update(mx.cpu())\n"
            "w, m = mx.nd.zeros((4, 2)), mx.nd.zeros((4, 2))\n"
            "w[2] = 3\n"
            "op(w, m, mx.nd.ones((1, 2)), mx.nd.array([2], dtype='int64'), lr=1, momentum=0, wd=0, out=(w, m))\n"
            "print(w.asnumpy()[:, 0].tolist(), m.asnumpy()[:, 0].tolist())\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    assert run.stdout.strip().splitlines()[-1] == "[0.0, 0.0, 2.0, 0.0] [0.0, 0.0, -1.0, 0.0]"


def test_native_row_update_rejects_bad_input():
    op = native.native_row_update(mx.cpu())
    assert op is not None, "the native row update is not built"
    w, m = mx.nd.zeros((5, 3)), mx.nd.zeros((5, 3))
    grad = mx.nd.ones((2, 3))
    kw = dict(lr=0.1, momentum=0.9, wd=0.0, out=(w, m))
    with pytest.raises(mx.base.MXNetError, match="index 5 outside the bank's 5 rows"):
        op(w, m, grad, mx.nd.array([1, 5], dtype=np.int64), **kw)
        mx.nd.waitall()
    with pytest.raises(mx.base.MXNetError, match="index must be int64"):
        op(w, m, grad, mx.nd.array([1, 2], dtype=np.int32), **kw)
    with pytest.raises(mx.base.MXNetError, match=r"grad \[S, D\]"):
        op(w, m, mx.nd.ones((2, 4)), mx.nd.array([1, 2], dtype=np.int64), **kw)
    with pytest.raises(mx.base.MXNetError, match="attribute 'wd' is required"):
        op(w, m, grad, mx.nd.array([1, 2], dtype=np.int64), lr=0.1, momentum=0.9, out=(w, m))
    assert not w.asnumpy().any() and not m.asnumpy().any()   # nothing was written by a rejected call


def test_native_row_update_into_other_arrays_copies_then_updates():
    """Called with outputs that are not its inputs, the update leaves the inputs alone and writes the whole
    updated bank (rows not sampled included) to the outputs."""
    op = native.native_row_update(mx.cpu())
    rng = np.random.default_rng(3)
    w, m = rng.standard_normal((6, 4), dtype=np.float32), rng.standard_normal((6, 4), dtype=np.float32)
    g = rng.standard_normal((2, 4), dtype=np.float32)
    W, M = mx.nd.array(w), mx.nd.array(m)
    in_place = (mx.nd.array(w), mx.nd.array(m))
    kw = dict(lr=0.1, momentum=0.9, wd=5e-4)
    idx = mx.nd.array([1, 4], dtype=np.int64)
    outs = op(W, M, mx.nd.array(g), idx, **kw)
    op(*in_place, mx.nd.array(g), idx, out=in_place, **kw)
    np.testing.assert_array_equal(W.asnumpy(), w)
    np.testing.assert_array_equal(M.asnumpy(), m)
    for new, same in zip(outs, in_place):
        np.testing.assert_array_equal(new.asnumpy(), same.asnumpy())
    assert not np.array_equal(in_place[0].asnumpy()[[1, 4]], w[[1, 4]])
    np.testing.assert_array_equal(in_place[0].asnumpy()[[0, 2, 3, 5]], w[[0, 2, 3, 5]])


_HEAP_PROBE = """
import mxnet as mx, numpy as np
from partial_fc.bench.common import heap_in_use
from partial_fc.head import kernels, native

op = native.native_ops(mx.cpu())
w, m = mx.nd.ones((64, 8)), mx.nd.zeros((64, 8))
g, idx = mx.nd.ones((16, 8)) * 0.01, mx.nd.array(np.arange(0, 64, 4), dtype=np.int64)
x, v, shift = mx.nd.ones((8, 16)) * 0.1, mx.nd.ones((16,)), mx.nd.zeros((8,))

def calls(n):
    for _ in range(n):
        op.pfc_sgd_mom_rows(w, m, g, idx, lr=0.01, momentum=0.9, wd=5e-4, project=1, out=(w, m))
        kernels.scale_columns(x, v)
        kernels.exp_row_sum(x, 0.0, shift)
        mx.nd.waitall()

calls(500)  # MXNet's pools and caches warm up
before = heap_in_use()
calls(5000)
print(heap_in_use() - before)
"""


def test_native_operators_hold_no_memory_per_call():
    """MXNet 1.9 never frees the list of mutable inputs it asks a library operator for, on every call (32
    bytes): the in-place operators write their outputs instead. A soak of 100,000 steps found the head's heap
    rising by about 0.1 KB per step when they declared mutable inputs. A fresh process: after an operator
    has failed (the tests above make some fail on purpose), MXNet holds memory on every later call."""
    run = subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    grown = int(run.stdout.strip().splitlines()[-1])
    # Declared mutable, the three operators' 15,000 calls held 480 KB.
    assert grown < 64 * 1024, f"the heap grew by {grown} bytes over 15,000 native operator calls"


def test_without_the_native_library_the_update_falls_back_and_says_so(monkeypatch, tmp_path, caplog):
    """A project not installed by scripts/install.sh (no compiled library), or a library this MXNet cannot
    load, still trains, on stock operators, with a warning naming the file."""
    monkeypatch.setattr(native, "_native", {})
    monkeypatch.setattr(native, "_NATIVE_DIR", str(tmp_path))
    with caplog.at_level("WARNING", logger="partial_fc.head.native"):
        assert native.native_row_update(mx.cpu()) is None
    library = tmp_path / native.NATIVE_LIBRARY
    assert f"{library}: missing" in caplog.text and "scripts/install.sh" in caplog.text
    library.write_bytes(b"not a library")
    monkeypatch.setattr(native, "_native", {})
    caplog.clear()
    with caplog.at_level("WARNING", logger="partial_fc.head.native"):
        assert native.native_row_update(mx.cpu()) is None
    assert f"{library}: cannot be loaded" in caplog.text
    # The fallback computes the same step.
    w, m, (bank, _) = _float32_banks()
    sample = Sample(index=np.array([2, 9]), labels=np.zeros(0, np.int64), full=False)
    g = np.ones((2, 7), np.float32)
    bank.update_rows(sample, 0, 2, mx.nd.array(g), 0.1)
    mom = 0.9 * m[[2, 9]] - 0.1 * 5e-4 * w[[2, 9]] - 0.1 * g
    np.testing.assert_allclose(bank.numpy()[0][[2, 9]], w[[2, 9]] + mom, rtol=1e-6)
    assert native.native_row_update(mx.gpu(0)) is None   # CPU only: a GPU bank takes stock operators


def test_convert_rows_between_dtypes():
    x = np.random.default_rng(4).standard_normal((10, 3)).astype(np.float32)
    h = convert_rows(x, "float32", "float16")
    b = convert_rows(h, "float16", "bfloat16")
    assert h.dtype == np.float16 and b.dtype == np.uint16
    assert np.array_equal(b, from_float32(h.astype(np.float32), "bfloat16"))
    assert np.array_equal(convert_rows(b, "bfloat16", "float32"), to_float32(b, "bfloat16"))


def test_bad_dtype_and_inputs():
    with pytest.raises(ValueError, match="unknown memory bank dtype 'int8'"):
        MemoryBank.create(3, 2, dtype="int8")
    with pytest.raises(ValueError, match="must be floating point"):
        MemoryBank(np.zeros((3, 2), np.int32), dtype="float16")


def test_memory_plan_uses_bank_bytes_and_shard_sizes():
    p = memory_plan(100_000_000, 8, 512, "float16", 0.1, 64)
    assert p["n_local"] == 12_500_000 and p["sampled"] == 1_250_000 and p["global_batch"] == 512
    assert p["bank_bytes"] == bank_bytes(12_500_000, 512, "float16") == p["centers_bytes"] + p["momentum_bytes"]
    assert p["logits_bytes"] == 512 * 1_250_000 * 4
    assert memory_plan(100_000_000, 8, 512, "float32")["bank_bytes"] == 2 * p["bank_bytes"]
    uneven = memory_plan(10, 3, 4, "float32", 1.0, 1)
    assert uneven["n_local"] == 4                                   # the largest shard
    table = format_memory_plan([p])
    assert table.count("\n") == 3 and "12,500,000" in table


def test_config_bank_dtype():
    from partial_fc import config

    assert config.load({}).bank_dtype == "float32"
    assert config.load({"PFC_BANK_DTYPE": "bfloat16"}).bank_dtype == "bfloat16"
    with pytest.raises(config.ConfigError, match="PFC_BANK_DTYPE must be 'float32', 'float16' or 'bfloat16'"):
        config.load({"PFC_BANK_DTYPE": "fp16"})


def test_memory_plan_command(capsys):
    import json

    from partial_fc import cli

    assert cli.main(["memory-plan", "--classes", "1e6", "--workers", "2,3", "--dtypes", "bfloat16", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [memory_plan(1_000_000, w, 512, "bfloat16", 0.1, 64) for w in (2, 3)]
    assert cli.main(["memory-plan", "--workers", "8"]) == 0
    assert capsys.readouterr().out.count("| 8 |") == 2          # float32 and float16 rows
    with pytest.raises(SystemExit) as e:
        cli.main(["memory-plan", "--dtypes", "fp8"])
    assert e.value.code == 2 and "unknown dtype 'fp8'" in capsys.readouterr().err
