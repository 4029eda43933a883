"""The train and synth subcommands as users run them: output on success, one-line errors on bad input."""
import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)


def _cli(*args, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("PFC_")}
    full.update(env)
    return subprocess.run([os.path.join(BIN, "partial-fc"), *args], env=full, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "data"
    p = _cli("synth", "--output", str(out), "--identities", "6", "--images-per-identity", "3", "--pairs", "8",
             "--nuisance", "0.5")
    assert p.returncode == 0, p.stderr
    return out


def test_synth_writes_a_dataset(tiny):
    assert sorted(os.listdir(tiny)) == ["property", "synth_hard.bin", "synth_val.bin", "train.idx", "train.rec"]
    assert (tiny / "property").read_text().strip() == "6,112,112"


def test_test_io_reports_images_per_second(tiny):
    p = _cli("train", "--test-io", "--batches", "2", PFC_DATA_DIR=str(tiny), PFC_BATCH_SIZE="4")
    assert p.returncode == 0, p.stderr
    assert "images/s" in p.stdout and str(tiny) in p.stdout


@pytest.mark.parametrize("env, message", [
    ({"PFC_DATA_DIR": "/nonexistent/faces"}, "/nonexistent/faces"),
    ({"PFC_NETWORK": "r101"}, "r101"),
    ({"PFC_FP16": "1"}, "PFC_FP16=1 needs a GPU"),
    ({"PFC_NUM_CLASSES": "7"}, "PFC_NUM_CLASSES=7 disagrees"),
    ({"PFC_BATCH_SIZE": "64"}, "18 images, fewer than one global batch"),
])
def test_bad_settings_give_one_line_and_nonzero_exit(tiny, tmp_path, env, message):
    env = {"PFC_DATA_DIR": str(tiny), "PFC_OUTPUT": str(tmp_path / "out"), "PFC_COMM": "local",
           "PFC_NETWORK": "mbf", "PFC_MAX_STEPS": "1", "PFC_BATCH_SIZE": "4", **env}
    p = _cli("train", **env)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("partial-fc: error:") and message in lines[0], p.stderr
