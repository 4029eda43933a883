"""A bad PFC_* setting under a launcher: one line. Before the launch (`bash config.sh check`, which run.sh and
scripts/example.sh run first) it is one line and exit status 2; inside `horovodrun ... bash config.sh` it
is one worker line (rank 0's: the others hold back, training/startup.py let_rank_0_speak), after which
horovodrun adds its own report and status 1, which no worker can change."""
import os
import subprocess
import sys

import pytest

from support.cli import one_line_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
BAD = [({"PFC_FOO": "1"}, "unknown setting PFC_FOO"),
       ({"PFC_BATCH_SIZE": "abc"}, "PFC_BATCH_SIZE='abc' is not an integer"),
       ({"PFC_NETWORK": "r7"}, "PFC_NETWORK='r7' is not a known network")]


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFC_")}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PFC_DATA_DIR="", PFC_NUM_CLASSES="40", PFC_BATCH_SIZE="4",
               PFC_EMBEDDING_SIZE="16", PFC_MAX_STEPS="2", PFC_TENSORBOARD="0", PFC_OUTPUT=str(tmp_path / "out"),
               NP="2")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(cmd, env, timeout=300):
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_good_settings_pass_with_a_summary_line(tmp_path):
    p = _run(["bash", "config.sh", "check"], _env(tmp_path))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("settings OK: network mbf") and f"output {tmp_path / 'out'}" in p.stdout
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("env,needle", BAD)
def test_config_sh_check_is_one_line_and_exit_2(tmp_path, env, needle):
    p = _run(["bash", "config.sh", "check"], _env(tmp_path, **env))
    assert p.returncode == 2 and needle in one_line_error(p.stderr), p.stderr


def test_a_checkpoint_in_the_way_or_missing_is_found_before_the_launch(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    p = _run(["bash", "config.sh", "check"], _env(tmp_path, PFC_RESUME=1))
    assert p.returncode == 2 and "PFC_RESUME=1: no complete checkpoint in" in one_line_error(p.stderr)
    p = _run(["bash", "config.sh", "check"], _env(tmp_path, PFC_DATA_DIR=tmp_path / "nowhere"))
    assert p.returncode == 1 and "nowhere/train.rec: missing" in one_line_error(p.stderr)


def test_pretrained_model_is_read_and_fitted_before_the_launch(tmp_path):
    from support import insightface_model  # MXNet: only this test needs it

    prefix = tmp_path / "src" / "model"
    prefix.parent.mkdir()
    insightface_model.save(prefix, epoch=1, network="mbf", dim=16)  # PFC_EMBEDDING_SIZE=16 in _env
    p = _run(["bash", "config.sh", "check"], _env(tmp_path, PFC_PRETRAINED=f"{prefix},1"))
    assert p.returncode == 0 and f"backbone from {prefix},1" in p.stdout, p.stderr
    p = _run(["bash", "config.sh", "check"], _env(tmp_path, PFC_PRETRAINED=f"{prefix},2"))
    assert p.returncode == 1 and f"{prefix}-0002.params: no such parameter file" in one_line_error(p.stderr)
    p = _run(["bash", "config.sh", "check"], _env(tmp_path, PFC_PRETRAINED=f"{prefix},1", PFC_NETWORK="mnas05"))
    assert p.returncode == 2 and "does not fit PFC_NETWORK=mnas05" in one_line_error(p.stderr), p.stderr


def test_run_sh_stops_before_mpirun_with_one_line_and_exit_2(tmp_path):
    p = _run(["bash", "run.sh"], _env(tmp_path, PFC_FOO=1))
    assert p.returncode == 2, p.stdout + p.stderr
    assert "unknown setting PFC_FOO" in one_line_error(p.stderr) and p.stdout == ""  # no worker, no mpirun text


def _worker_errors(text, rank):
    return [x for x in text.splitlines() if x.startswith(f"[{rank}]") and "partial-fc: error:" in x]


def test_under_horovodrun_a_setting_every_rank_has_wrong_is_one_worker_line(tmp_path):
    cmd = ["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", "bash", "config.sh"]
    p = _run(cmd, _env(tmp_path, PFC_FOO=1))
    text = p.stdout + p.stderr
    assert p.returncode == 1  # horovodrun's own status for any failed worker
    assert len(_worker_errors(text, 0)) == 1 and "unknown setting PFC_FOO" in _worker_errors(text, 0)[0], text
    assert _worker_errors(text, 1) == [], text  # stopped by horovodrun while holding back the same line
    assert "Exit code: 2" in text  # horovodrun names rank 0's status


def test_under_horovodrun_a_setting_only_one_rank_has_wrong_is_still_reported_by_it(tmp_path):
    cmd = ["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", "bash", "-c",
           '[ "$HOROVOD_RANK" = 1 ] && export PFC_FOO=1; exec bash config.sh']
    p = _run(cmd, _env(tmp_path))
    text = p.stdout + p.stderr
    assert p.returncode == 1
    assert len(_worker_errors(text, 1)) == 1 and "unknown setting PFC_FOO" in _worker_errors(text, 1)[0], text
    assert _worker_errors(text, 0) == [], text
