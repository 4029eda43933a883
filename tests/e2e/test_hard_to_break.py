"""What users see when things go wrong, end to end through `partial-fc train` (README: "What happens when
things go wrong"). One section per failure class:

  1. bad input: one line on stderr naming the file and the problem, a non-zero exit, the output untouched
  2. numerical faults: a non-finite loss or gradient stops the run before the update; the checkpoint stays
  3. crash safety: kill -9 at every file of a save, and a full disk during a save
  4. dead or stuck workers under horovodrun -np 2: the job ends within the configured time
  5. exact resume after a kill at a random step (horovodrun -np 2)
"""
import hashlib
import os
import random
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from partial_fc import checkpoint
from partial_fc.data import records, synth
from support.runs import BIN, ROOT, losses_by_step, rank_pid, wait_for_step

KILLER = os.path.join(ROOT, "tests", "support", "kill_during_save.py")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFC_")}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PFC_COMM="local", PFC_BATCH_SIZE="4", PFC_EMBEDDING_SIZE="16",
               PFC_NETWORK="mbf", PFC_FREQUENT="1", PFC_VERBOSE="1000", PFC_CHECKPOINT_STEPS="2",
               PFC_TENSORBOARD="0", PFC_EVAL_BATCH_SIZE="16", OMP_NUM_THREADS="1", MXNET_CPU_WORKER_NTHREADS="1",
               HOROVOD_FUSION_THRESHOLD="0")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _train(env, cmd=None, timeout=300, **popen):
    cmd = cmd or ["partial-fc", "train"]
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **popen)


def _one_line_error(p, rc, *needles):
    """The run failed with exit status `rc` and its last stderr line is one error naming every needle."""
    assert p.returncode == rc, f"exit {p.returncode}, expected {rc}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    line = [x for x in p.stderr.splitlines() if x.strip()][-1]
    assert line.startswith("partial-fc: error: "), p.stderr[-3000:]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def _digest(folder):
    """Hash of every checkpoint file in `folder` (what a failed run must not touch)."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name.startswith("model"):
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synth.write_dataset(str(root / "ok"), identities=20, images_per_identity=3, val_pairs=8, seed=5, progress=False)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A good 2-step checkpoint of the `ok` dataset (W = 1)."""
    out = tmp_path_factory.mktemp("trained") / "model"
    p = _train(_env(PFC_DATA_DIR=data / "ok", PFC_OUTPUT=out, PFC_MAX_STEPS=2))
    assert p.returncode == 0, p.stderr[-3000:]
    assert checkpoint.latest(str(out)).endswith("model-0002.json")
    return out


def _copy_data(data, tmp_path, name="d"):
    import shutil
    dst = tmp_path / name
    shutil.copytree(data / "ok", dst)
    return dst


def _resume_with(trained, tmp_path, **extra):
    """Resume a copy of the good checkpoint with `extra` settings; returns (process, output folder, digest)."""
    import shutil
    out = tmp_path / "model"
    shutil.copytree(trained, out)
    before = _digest(out)
    p = _train(_env(**dict(dict(PFC_OUTPUT=out, PFC_RESUME=1, PFC_MAX_STEPS=4), **extra)))
    return p, out, before


# --- 1. bad input ----------------------------------------------------------------------------------------

def _break_data(kind, d):
    if kind == "missing idx":
        os.remove(d / "train.idx")
        return "train.idx: missing"
    if kind == "missing rec":
        os.remove(d / "train.rec")
        return "train.rec: missing"
    if kind == "unreadable rec":
        os.remove(d / "train.rec")
        os.mkdir(d / "train.rec")  # root reads any file: a folder is what "unreadable" can mean in this test
        return "train.rec: not a regular file"
    if kind == "unreadable idx":
        os.remove(d / "train.idx")
        os.mkdir(d / "train.idx")
        return "train.idx: unreadable"
    if kind == "unreadable property":
        os.remove(d / "property")
        os.mkdir(d / "property")
        return "property: unreadable"
    if kind == "malformed property":
        (d / "property").write_text("twenty\n")
        return "property: expected 'num_classes,height,width'"
    if kind == "property class count":
        (d / "property").write_text("25,112,112")
        return "property: says 25 classes, but"
    if kind == "property image size":
        (d / "property").write_text("20,96,96")
        return "property: says images are 96x96"
    if kind == "label beyond num_classes":
        (d / "property").write_text("5,112,112")
        return "which is not below num_classes=5"
    if kind == "offset past the end":
        size = os.path.getsize(d / "train.rec")
        with open(d / "train.rec", "r+b") as f:
            f.truncate(size // 2)
        return "is past the end of"
    if kind == "last record cut":  # `truncate -s -10 train.rec`: every idx offset stays inside the file
        os.truncate(d / "train.rec", os.path.getsize(d / "train.rec") - 10)
        return "train.rec: truncated record"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing idx", "missing rec", "unreadable rec", "unreadable idx",
                                  "unreadable property", "malformed property", "property class count",
                                  "property image size", "label beyond num_classes", "offset past the end",
                                  "last record cut"])
def test_bad_dataset_files_stop_with_one_line(data, trained, tmp_path, kind):
    d = _copy_data(data, tmp_path)
    needle = _break_data(kind, d)
    p, out, before = _resume_with(trained, tmp_path, PFC_DATA_DIR=d)
    _one_line_error(p, 1, str(d), needle)
    assert _digest(out) == before


def _write_im2rec(folder, labels):
    """A plain im2rec dataset (no header record) with the given labels, real JPEGs of 112x112."""
    import cv2
    os.makedirs(folder)
    image = cv2.imencode(".jpg", np.full((112, 112, 3), 128, np.uint8))[1].tobytes()
    with records.RecordWriter(str(folder / "train.rec"), str(folder / "train.idx")) as w:
        for key, label in enumerate(labels):
            w.write(key, records.pack_image(label, image, id=key))


def test_a_negative_label_stops_with_one_line(tmp_path):
    d = tmp_path / "neg"
    _write_im2rec(d, [0, 1, -1, 2] * 4)
    p = _train(_env(PFC_DATA_DIR=d, PFC_OUTPUT=tmp_path / "out", PFC_MAX_STEPS=1))
    _one_line_error(p, 1, str(d / "train.rec"), "has label -1, which is negative")
    assert not (tmp_path / "out").exists()


def _corrupt(d, keys_magic=(), keys_jpeg=(), truncate_last=False):
    idx = dict(tuple(map(int, line.split())) for line in open(d / "train.idx"))
    blob = bytearray((d / "train.rec").read_bytes())
    for key in keys_magic:
        blob[idx[key]:idx[key] + 4] = b"\0\0\0\0"
    for key in keys_jpeg:
        start = idx[key] + 8 + 24  # record part header, then the image header: JPEG bytes follow
        blob[start:start + 600] = b"\x00" * 600
    (d / "train.rec").write_bytes(bytes(blob))
    if truncate_last:
        # The last image record loses its tail: every idx offset stays inside the file.
        last_image = 60  # synth: 20 identities x 3 images are keys 1..60
        with open(d / "train.rec", "r+b") as f:
            f.truncate(idx[last_image] + 40)
        # Only the image keys stay: the header (key 0) and identity records lie after them in the file.
        lines = [line for line in open(d / "train.idx") if 1 <= int(line.split()[0]) <= last_image]
        (d / "train.idx").write_text("".join(lines))


def test_bad_records_are_skipped_and_counted_then_stop_the_run_above_the_fraction(data, tmp_path):
    d = _copy_data(data, tmp_path)
    _corrupt(d, keys_magic=[5], keys_jpeg=[7, 30])
    # 15 steps of 4 read all 60 images once: 3 are bad, 5 % of them, tolerated at a fraction of 0.5.
    p = _train(_env(PFC_DATA_DIR=d, PFC_OUTPUT=tmp_path / "ok", PFC_MAX_STEPS=15, PFC_MAX_BAD_FRACTION=0.5,
                    PFC_CHECKPOINT_STEPS=15))
    assert p.returncode == 0, p.stderr[-3000:]
    warnings = [x for x in p.stderr.splitlines() if "bad image record(s) skipped" in x]
    assert warnings and "3 bad image record(s)" in warnings[-1] and str(d) in warnings[-1]
    assert "magic mismatch" in p.stderr
    # At a fraction of 0 the first bad record stops the run, naming the rec and the record.
    p = _train(_env(PFC_DATA_DIR=d, PFC_OUTPUT=tmp_path / "strict", PFC_MAX_STEPS=15, PFC_MAX_BAD_FRACTION=0))
    _one_line_error(p, 1, str(d / "train.rec"), "more than max_bad_fraction=0", "record key")


def test_a_truncated_record_is_a_bad_record_named_in_the_error(data, tmp_path):
    d = _copy_data(data, tmp_path)
    _corrupt(d, truncate_last=True)
    p = _train(_env(PFC_DATA_DIR=d, PFC_OUTPUT=tmp_path / "strict", PFC_MAX_STEPS=15, PFC_MAX_BAD_FRACTION=0))
    _one_line_error(p, 1, str(d / "train.rec"), "truncated record", "record key 60")


@pytest.mark.parametrize("env,needle", [({"PFC_FOO": "1"}, "unknown setting PFC_FOO"),
                                        ({"PFC_BATCH_SIZE": "abc"}, "PFC_BATCH_SIZE='abc' is not an integer"),
                                        ({"PFC_SAMPLE_RATE": "1.5"}, "PFC_SAMPLE_RATE must be in (0, 1]"),
                                        ({"PFC_LR": "nan"}, "PFC_LR='nan' is not a finite number")])
def test_unknown_or_malformed_settings_exit_2(data, trained, tmp_path, env, needle):
    p, out, before = _resume_with(trained, tmp_path, PFC_DATA_DIR=data / "ok", **env)
    _one_line_error(p, 2, needle)
    assert _digest(out) == before


@pytest.mark.parametrize("env,needle", [({"PFC_NETWORK": "r18"}, "network"),
                                        ({"PFC_EMBEDDING_SIZE": "32"}, "embedding"),
                                        ({"PFC_NUM_CLASSES": "21", "PFC_DATA_DIR": ""}, "classes")])
def test_a_checkpoint_of_another_model_is_refused(data, trained, tmp_path, env, needle):
    settings = dict(PFC_DATA_DIR=data / "ok")
    settings.update(env)
    p, out, before = _resume_with(trained, tmp_path, **settings)
    line = _one_line_error(p, 1, "model-0002.json")
    assert needle in line.lower()
    assert _digest(out) == before


def test_a_bin_that_is_not_the_expected_pickle_is_refused_without_running_it(data, trained, tmp_path):
    d = _copy_data(data, tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle
    (d / "evil.bin").write_bytes(pickle.dumps(Evil()))
    p, out, before = _resume_with(trained, tmp_path, PFC_DATA_DIR=d)
    _one_line_error(p, 1, str(d / "evil.bin"))
    assert not marker.exists() and _digest(out) == before


def _horovodrun(np_, inner):
    return ["horovodrun", "-np", str(np_), "-H", f"localhost:{np_}", "--gloo", "bash", "-c", inner]


def test_batch_sizes_that_differ_between_ranks_stop_every_rank(data, tmp_path):
    env = _env(PFC_COMM="horovod", PFC_DATA_DIR=data / "ok", PFC_OUTPUT=tmp_path / "out", PFC_MAX_STEPS=2)
    del env["PFC_BATCH_SIZE"]
    p = _train(env, cmd=_horovodrun(2, 'PFC_BATCH_SIZE=$((4 + HOROVOD_RANK)) exec partial-fc train'))
    assert p.returncode != 0
    text = p.stdout + p.stderr
    assert "PFC_BATCH_SIZE differs between ranks (rank 0: 4, rank 1: 5)" in text, text[-3000:]
    # horovodrun prints a traceback of its own when a worker fails; the workers print one line each.
    worker_lines = [x for x in text.splitlines() if x.startswith(("[0]", "[1]"))]
    assert not any("Traceback" in x for x in worker_lines), text[-3000:]
    assert checkpoint.latest(str(tmp_path / "out")) is None


# --- 2. numerical faults ---------------------------------------------------------------------------------

def test_a_non_finite_loss_stops_before_the_update_and_keeps_the_checkpoint(data, trained, tmp_path):
    p, out, before = _resume_with(trained, tmp_path, PFC_DATA_DIR=data / "ok", PFC_LR=1e30,
                                  PFC_MEMORY_BANK_LR=1e30, PFC_MAX_STEPS=8)
    line = _one_line_error(p, 1, "stopping before the update so the last checkpoint stays good")
    assert "inf or NaN" in line or "the loss is nan" in line or "the loss is inf" in line
    assert _digest(out) == before and checkpoint.latest(str(out)).endswith("model-0002.json")


# --- 3. crash safety -------------------------------------------------------------------------------------

def _check_resumable(out, data, expect_step):
    manifest = checkpoint.latest(str(out))
    assert manifest and manifest.endswith(f"model-{expect_step:04d}.json")
    ckpt = checkpoint.load(manifest)
    arg, aux = ckpt.backbone()
    w, m = ckpt.centers(0, ckpt.meta["num_classes"])
    assert arg and aux and np.isfinite(w).all() and np.isfinite(m).all()
    p = _train(_env(PFC_DATA_DIR=data / "ok", PFC_OUTPUT=out, PFC_RESUME=1, PFC_MAX_STEPS=6))
    assert p.returncode == 0, p.stderr[-3000:]
    assert checkpoint.latest(str(out)).endswith("model-0006.json")
    leftovers = [n for _, _, files in os.walk(out) for n in files if ".tmp-" in n]
    assert not leftovers, leftovers
    return p


# The run writes config.json (write 1), then the step-2 save (writes 2-7: weight, momentum, symbol, params,
# states, manifest), then the step-4 save (writes 8-13). Killed at a write of the step-4 save, before or after
# its rename, the newest complete checkpoint is step 2 until the step-4 manifest is in place.
@pytest.mark.parametrize("write,when,expect", [(8, "before", 2), (11, "before", 2), (12, "after", 2),
                                               (13, "before", 2), (13, "after", 4)])
def test_kill_9_at_any_write_of_a_save_leaves_a_resumable_checkpoint(data, tmp_path, write, when, expect):
    out = tmp_path / "model"
    p = _train(_env(PFC_DATA_DIR=data / "ok", PFC_OUTPUT=out, PFC_MAX_STEPS=6),
               cmd=[sys.executable, KILLER, str(write), when])
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-3000:])
    assert f"killing at write {write}" in p.stderr
    p = _check_resumable(out, data, expect)
    if expect == 2:  # the killed save's files are cleared away at start-up
        assert "left by a save that did not finish" in p.stdout


def test_a_full_disk_during_a_save_fails_loudly_and_keeps_the_previous_checkpoint(data, trained, tmp_path):
    import shutil
    out = tmp_path / "model"
    shutil.copytree(trained, out)
    before = _digest(out)
    limit = 512 * 1024  # logs, the graph and the small center shards fit; the backbone's .params (MBs) does not

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = _train(_env(PFC_DATA_DIR=data / "ok", PFC_OUTPUT=out, PFC_RESUME=1, PFC_MAX_STEPS=4),
               preexec_fn=small_disk)
    _one_line_error(p, 1, "checkpoint at step 4 not saved", "could not write", "FileStream.Write incomplete",
                    f"the previous checkpoint {out}/model-0002.json is intact")
    assert _digest(out) == before  # nothing of step 4 is left, nothing of step 2 changed
    _check_resumable(out, data, 2)


# --- 4. dead or stuck workers ----------------------------------------------------------------------------

def _launch_long(tmp_path, name, **extra):
    out = tmp_path / name
    env = _env(PFC_COMM="horovod", PFC_DATA_DIR="", PFC_NUM_CLASSES=40, PFC_OUTPUT=out, PFC_MAX_STEPS=100000,
               PFC_CHECKPOINT_STEPS=100000, **extra)
    proc = subprocess.Popen(["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", "partial-fc", "train"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, out


def _finish(proc, hung_after):
    """The job's (exit status, output); a job still running after `hung_after` seconds is hung: the test fails
    (this is the hang the watchdog exists to prevent, not a speed measurement)."""
    try:
        text = proc.communicate(timeout=hung_after)[0]
        return proc.returncode, text
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the job was still running {hung_after} s after the fault: it hung") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


@pytest.mark.parametrize("fault", ["stopped", "killed"])
def test_a_stuck_or_dead_rank_ends_the_job_within_the_timeout(tmp_path, fault):
    timeout = 15
    proc, out = _launch_long(tmp_path, fault, PFC_COLLECTIVE_TIMEOUT=timeout)
    try:
        deadline = time.time() + 240
        wait_for_step(out, 3, proc, deadline)
        victim = rank_pid(out, 1, deadline)
        os.kill(victim, signal.SIGSTOP if fault == "stopped" else signal.SIGKILL)
        # The watchdog's bound is about 1.5 x the timeout; far past it the job is hung, not slow.
        rc, text = _finish(proc, hung_after=4 * timeout + 60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            os.kill(victim, signal.SIGKILL)
        except (OSError, UnboundLocalError):
            pass
    assert rc != 0, text[-3000:]
    if fault == "stopped":
        # Rank 0 names the situation and the collective it was waiting in.
        assert "rank 0: step" in text and "did not finish within" in text and "the last collective" in text, \
            text[-3000:]
        assert "another rank is dead or stuck" in text



def test_a_rank_that_hangs_at_start_up_is_stopped_after_the_slow_timeout(data, tmp_path):
    """Start-up is watched too: a rank stuck before its first step (here: a settings check that never
    returns, as when a peer never joins it) stops with the start-up phase named, not a hang."""
    hang = ("import sys, time\n"
            "from partial_fc import cli\n"
            "from partial_fc.training import startup\n"
            "startup.check_same_everywhere = lambda *args: time.sleep(600)\n"
            "sys.exit(cli.main(['train']))\n")
    env = _env(PFC_DATA_DIR=data / "ok", PFC_OUTPUT=tmp_path / "out", PFC_MAX_STEPS=2, PFC_SLOW_TIMEOUT=3)
    p = _train(env, cmd=[sys.executable, "-c", hang], timeout=120)
    assert p.returncode == 3, f"exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    assert "rank 0: start-up did not finish within" in p.stderr and "(limit 3 s, PFC_SLOW_TIMEOUT=3)" in p.stderr, \
        p.stderr[-3000:]

# --- 5. exact resume after a kill at a random step -------------------------------------------------------

def test_resume_after_kill_9_at_a_random_step_repeats_the_uninterrupted_losses(data, tmp_path):
    total = 12
    kill_at = random.Random().randint(4, 10)
    print(f"killing at step {kill_at}")
    settings = dict(PFC_COMM="horovod", PFC_DATA_DIR=data / "ok", PFC_MAX_STEPS=total, PFC_CHECKPOINT_STEPS=3)
    launch = ["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", "partial-fc", "train"]
    full = tmp_path / "full"
    p = _train(_env(PFC_OUTPUT=full, **settings), cmd=launch)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]

    cut = tmp_path / "cut"
    proc = subprocess.Popen(launch, cwd=ROOT, env=_env(PFC_OUTPUT=cut, **settings), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_step(cut, kill_at, proc, time.time() + 240)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # every process of the job at once, as a lost machine would
        proc.communicate()
    saved = checkpoint.load(checkpoint.latest(str(cut))).step
    assert saved >= 3
    p = _train(_env(PFC_OUTPUT=cut, PFC_RESUME=1, **settings), cmd=launch)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]

    want, got = losses_by_step(full), losses_by_step(cut)
    assert sorted(want) == list(range(1, total + 1))
    steps = list(range(saved + 1, total + 1))
    np.testing.assert_allclose([got[s] for s in steps], [want[s] for s in steps], rtol=1e-6, atol=0)
