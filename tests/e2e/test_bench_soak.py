"""`partial-fc bench soak`, short: a few thousand head steps and a minute of the trainer under horovodrun -np 2.
No stall, every head step done, each rank sampled after the warm-up, at the middle and at the end, and
exactly --keep checkpoints (with nothing else of a checkpoint) on disk after the trainer's SIGTERM. The
figures themselves (step times, memory) are printed as targets by the benchmark and never asserted here."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def test_short_soak_of_the_head_and_the_trainer(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFC_")}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", OMP_NUM_THREADS="1", MXNET_CPU_WORKER_NTHREADS="1",
               HOROVOD_FUSION_THRESHOLD="0", TMPDIR=str(tmp_path))
    cmd = ["partial-fc", "bench", "soak", "--head-steps", "2000", "--trainer-seconds", "60", "--checkpoint-steps", "5",
           "--keep", "2", "--json"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=900, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout)

    head = report["head"]
    assert head["error"] is None and head["exit_status"] == 0
    assert head["steps_done"] == 2000 and head["stalls"] == 0
    assert sorted(r["rank"] for r in head["ranks"]) == [0, 1]
    for r in head["ranks"]:
        assert [s["step"] for s in r["samples"]] == [200, 1000, 2000]
        assert [s["at"] for s in r["samples"]] == ["after warm-up", "middle", "end"]
        assert all(s["rss_mb"] > 0 and s["heap_mb"] > 0 and s["fds"] > 0 and s["step_ms"] > 0 for s in r["samples"])

    trainer = report["trainer"]
    assert trainer["stalls"] == 0 and trainer["stop_line"].startswith("stopped by SIGTERM after step"), trainer
    assert "saved; PFC_RESUME=1 resumes it" in trainer["stop_line"]
    assert trainer["steps_done"] >= 5 and trainer["checkpoints"]["stray"] == []
    assert trainer["checkpoints"]["count"] == 2 and trainer["checkpoints"]["steps"][-1] == trainer["steps_done"]
    assert {s["rank"] for s in trainer["samples"]} == {0, 1}

    names = {(t["part"], t["what"]) for t in report["targets"]}
    assert ("head", "no stall") in names and ("trainer", "checkpoints on disk (= keep), no stray file") in names
    assert ("head", "rank 1 RSS growth after warm-up (MB)") in names
    assert ("head", "rank 0 C heap growth after warm-up (MB)") in names
    assert not os.listdir(tmp_path) or all(not n.startswith("pfc-bench-soak-") for n in os.listdir(tmp_path))
