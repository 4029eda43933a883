"""`partial-fc bench fc` end to end on a tiny problem: the JSON's structure, never its timings."""
import json
import math
import subprocess
import sys

import pytest

from partial_fc.cli import main


def test_bench_fc_json():
    cmd = [sys.executable, "-m", "partial_fc.cli", "bench", "fc",
           "--n-local", "1000", "--batch", "8", "--dim", "16", "--repeat", "1", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    assert report["benchmark"] == "fc"
    assert report["config"]["n_local"] == [1000] and report["config"]["rates"] == [1.0, 0.1]
    assert report["machine"]["cpu_count"] >= 1
    rows = report["results"]
    assert [(r["n_local"], r["rate"]) for r in rows] == [(1000, 1.0), (1000, 0.1)]
    assert [r["sampled"] for r in rows] == [1000, 100]
    for r in rows:
        for key in ("step_s", "ratio", "ratio_ceiling", "sampler_s", "sampler_share",
                    "gflops", "numpy_gflops", "vs_numpy"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
        assert len(r["step_times_s"]) == 1
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio_ceiling"] == 10.0
    # Only the sampler target applies at N_local = 1000; the ratio target is for N_local = 1e6.
    assert [(t["name"], t["rate"]) for t in report["targets"]] == [("sampler_share", 0.1)]
    assert isinstance(report["targets"][0]["pass"], bool)


@pytest.mark.parametrize("argv", [
    [],
    ["bench"],
    ["bench", "nope"],
    ["bench", "fc", "--rates", "1.0,0"],
    ["bench", "fc", "--n-local", "1.5"],
    ["bench", "fc", "--batch", "x"],
    ["bench", "fc", "--n-local", "1000,"],
    ["bench", "fc", "--unknown"],
])
def test_bad_arguments_are_one_line_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("partial-fc") and "error:" in err and err.count("\n") == 1, err
