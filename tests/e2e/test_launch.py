"""The launch paths users type, end to end on a tiny synthetic dataset:
horovodrun -np 2 bash config.sh, then resuming its W = 2 checkpoint with one worker and with
`NP=3 bash run.sh` (mpirun, three workers): the centers are re-sharded, not re-initialised."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from partial_fc import checkpoint
from partial_fc.data import synth

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFC_")}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PFC_DATA_DIR=str(tmp_path / "data"),
               PFC_OUTPUT=str(tmp_path / "model"), PFC_BATCH_SIZE="4", PFC_EMBEDDING_SIZE="16",
               PFC_FREQUENT="2", PFC_VERBOSE="4", PFC_CHECKPOINT_STEPS="2", PFC_EVAL_BATCH_SIZE="16",
               PFC_TENSORBOARD="0")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(cmd, env, timeout=300):
    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-4000:]}"
    return p.stdout


def _centers(manifest):
    ckpt = checkpoint.load(manifest)
    return ckpt.centers(0, ckpt.meta["num_classes"]), ckpt.meta["world_size"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    synth.write_dataset(str(root / "data"), identities=40, images_per_identity=3, val_pairs=8, seed=3,
                        progress=False)
    return root


def test_train_under_horovodrun_then_resume_at_one_and_three_workers(tiny_data):
    out = tiny_data / "model"
    log = _run(["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", "bash", "config.sh"],
               _env(tiny_data, PFC_MAX_STEPS=4))
    assert "step      4/4" in log and "synth_val" in log and "verification at step 4" in log
    (w2, m2), W = _centers(str(out / "model-0004.json"))
    assert W == 2

    _run(["bash", "config.sh"], _env(tiny_data, PFC_MAX_STEPS=6, PFC_RESUME=1, PFC_COMM="local"))
    (w1, m1), W = _centers(str(out / "model-0006.json"))
    assert W == 1
    # Rows no step sampled keep weight and momentum bit for bit: the W=2 shards were carried over.
    same = np.all(w1 == w2, axis=1)
    assert 0 < same.sum() < len(w1) and np.array_equal(m1[same], m2[same])

    log = _run(["bash", "run.sh"], _env(tiny_data, PFC_MAX_STEPS=8, PFC_RESUME=1, NP=3))
    assert "3 worker(s)" in log and "resumed from" in log
    (w3, _), W = _centers(str(out / "model-0008.json"))
    assert W == 3 and 0 < np.all(w3 == w1, axis=1).sum() < len(w3)
    meta = json.loads((out / "model-0008.json").read_text())
    assert [s["count"] for s in meta["shards"]] == [14, 13, 13]
