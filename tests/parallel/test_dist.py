"""Each transport's collectives do what the operator relies on: rank-ordered rows, exact int64, sums."""
import mxnet as mx
import numpy as np


def test_allgather_keeps_rank_order_and_exact_int64(comm):
    big = 2**40 + 7  # far above float32's 2^24: class ids must not pass through a float
    mine = np.array([big + 10 * comm.rank, big + 10 * comm.rank + 1], dtype=np.int64)
    got = comm.allgather(mx.nd.array(mine, dtype=np.int64), "test.labels").asnumpy()
    assert got.dtype == np.int64
    expected = np.concatenate([[big + 10 * r, big + 10 * r + 1] for r in range(comm.size)])
    assert np.array_equal(got, expected)


def test_allreduce_max_and_sum(comm):
    x = mx.nd.array([comm.rank, -comm.rank, 1.5], dtype=np.float32)
    assert np.array_equal(comm.allreduce(x, "max", "test.max").asnumpy(), [comm.size - 1, 0, 1.5])
    total = sum(range(comm.size))
    np.testing.assert_allclose(comm.allreduce(x, "sum", "test.sum").asnumpy(), [total, -total, 1.5 * comm.size])


def test_reducescatter_sums_and_returns_this_ranks_rows(comm):
    B, D = 3, 4
    # Rank r contributes (r + 1) * base; every rank receives its own B rows of the sum.
    base = np.arange(B * comm.size * D, dtype=np.float32).reshape(B * comm.size, D)
    out = comm.reducescatter(mx.nd.array(base * (comm.rank + 1)), "test.reducescatter").asnumpy()
    scale = comm.size * (comm.size + 1) / 2
    np.testing.assert_allclose(out, base[comm.rank * B:(comm.rank + 1) * B] * scale)


def test_broadcast_from_rank_zero(comm):
    x = mx.nd.array(np.full(5, comm.rank + 3, dtype=np.float32))
    assert np.array_equal(comm.broadcast(x, 0, "test.broadcast").asnumpy(), np.full(5, 3.0))
