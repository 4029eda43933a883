"""`partial-fc bench comm` at the launcher's world size on tiny shapes: every row and the FC step's share
are there and consistent on every rank, the emulated allgather equals the real one, and only rank 0 prints."""
import io
import math

from partial_fc.bench import comm as bench_comm


def test_bench_comm_rows(comm):
    out = io.StringIO()
    report = bench_comm.benchmark(batches=[2 * comm.size, 5 * comm.size + 1], dim=8, repeat=2, fc_n_local=50,
                            fc_rate=0.5, fc_repeat=1, comm=comm, out=out, log=io.StringIO())
    assert report["config"]["world_size"] == comm.size
    rows = report["results"]
    # Each rank holds B = B_global // W rows, so the global batch is rounded down to a multiple of W.
    odd = (5 * comm.size + 1) // comm.size  # 5 at W >= 2
    assert [(r["b_per_rank"], r["b_global"]) for r in rows] == [(2, 2 * comm.size), (odd, odd * comm.size)]
    for r in rows:
        assert list(r["us"]) == list(r["us_median"]) == list(bench_comm.COLLECTIVES)
        assert all(math.isfinite(v) and v > 0 for v in [*r["us"].values(), *r["us_median"].values()])
        assert r["ratio"] == r["us"]["emulated allgather"] / r["us"]["allgather features"]
        assert r["ratio_median"] == r["us_median"]["emulated allgather"] / r["us_median"]["allgather features"]
        assert r["emulation_matches"] is True
    step = report["fc_step"]
    assert step["skipped"] is None and step["n_local"] == 50
    assert 0 < step["share"] <= 1
    assert step["comm_s"] == sum(step["phases_s"].get(p, 0.0) for p in bench_comm.COMM_PHASES)
    # Lined up, every rank waited at the barriers ("wait") and the collectives alone are a positive share.
    assert 0 < step["transfer_share"] and "wait" in step["lined_up_phases_s"]
    if comm.rank == 0:
        assert "allgather F" in out.getvalue() and "communication (exchange + scatter)" in out.getvalue()
    else:
        assert out.getvalue() == ""
