"""Stopping a run with SIGTERM / SIGINT (training/preemption.py, docs/failures.md "Stopping a run"): to the
launcher or to one rank, under horovodrun -np 2 and mpirun -np 2 (run.sh). Every rank stops at the same
step, one checkpoint of it is saved, the job exits 4 with one line from rank 0, and PFC_RESUME=1 repeats
the uninterrupted run's losses from there. A second signal during that save exits at once and leaves the
previous checkpoint the newest complete one."""
import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from partial_fc import checkpoint
from partial_fc.training.preemption import EXIT_PREEMPTED, SAME_REQUEST_S
from support.runs import ROOT, losses_by_step, rank_pid, run as _run, small_run_env, wait_for_step

TOTAL = 10
HOROVODRUN = ["horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", "bash", "config.sh"]  # as users launch
STOPPED = re.compile(r"partial-fc: error: stopped by (SIG[A-Z]+) after step (\d+): checkpoint (\S+) saved; "
                     r"PFC_RESUME=1 resumes it")


def _env(output, **extra):
    return small_run_env(output, TOTAL, **extra)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The losses of the whole run at W = 2 (horovodrun; Horovod over MPI sums two values the same way), with
    config.sh's settings where the test sets none, as run.sh has too."""
    out = tmp_path_factory.mktemp("full") / "model"
    p = _run(HOROVODRUN, _env(out))
    assert p.returncode == 0, p.stdout[-3000:]
    losses = losses_by_step(out)
    assert sorted(losses) == list(range(1, TOTAL + 1))
    return losses


def _stop(cmd, env, output, target, sig, after_step=2):
    """Launch `cmd`, send `sig` to `target` ("launcher" or a rank number) once step `after_step` is logged;
    returns (exit status, output text, signal named by rank 0, step stopped after, manifest path)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        wait_for_step(output, after_step, proc, deadline)
        pid = proc.pid if target == "launcher" else rank_pid(output, target, deadline)
        os.kill(pid, sig)
        text = proc.communicate(timeout=240)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    lines = [m for m in map(STOPPED.search, text.splitlines()) if m]
    assert len(lines) == 1, text[-4000:]  # one line, from rank 0
    name, step, manifest = lines[0].group(1), int(lines[0].group(2)), lines[0].group(3)
    return proc.returncode, text, name, step, manifest


def _check_stopped_checkpoint(output, step, manifest, uninterrupted, resume_cmd, resume_env):
    assert after_signal_step_is_consistent(output, step, manifest)
    p = _run(resume_cmd, resume_env)
    assert p.returncode == 0, p.stdout[-3000:]
    assert f"resumed from {manifest}" in p.stdout
    got = losses_by_step(output)
    steps = list(range(step + 1, TOTAL + 1))
    np.testing.assert_allclose([got[s] for s in steps], [uninterrupted[s] for s in steps], rtol=1e-6, atol=0)


def after_signal_step_is_consistent(output, step, manifest, total=TOTAL):
    """The checkpoint the line names is the newest complete one, of that step, with both ranks' shards, and
    every rank logged exactly the steps up to it (none ran ahead, none stopped short)."""
    assert checkpoint.latest(str(output)) == manifest and manifest.endswith(f"model-{step:04d}.json")
    ckpt = checkpoint.load(manifest)
    assert ckpt.step == step and ckpt.meta["world_size"] == 2
    weight, momentum = ckpt.centers(0, ckpt.meta["num_classes"])
    assert np.isfinite(weight).all() and np.isfinite(momentum).all()
    assert 2 <= step < total and max(losses_by_step(output)) == step
    return True


@pytest.mark.parametrize("target,sig", [("launcher", signal.SIGTERM), ("launcher", signal.SIGINT), (1, signal.SIGTERM)],
                         ids=["SIGTERM-to-horovodrun", "SIGINT-to-horovodrun", "SIGTERM-to-rank-1"])
def test_a_signal_under_horovodrun_stops_every_rank_at_one_step_with_a_checkpoint(uninterrupted, tmp_path,
                                                                                  target, sig):
    out = tmp_path / "model"
    rc, text, name, step, manifest = _stop(HOROVODRUN, _env(out), out, target, sig)
    # horovodrun reports any worker's non-zero status as its own 1, with a traceback naming the first one.
    assert rc == 1 and f"Exit code: {EXIT_PREEMPTED}" in text, text[-3000:]
    # horovodrun passes SIGINT and SIGTERM on to the ranks as SIGTERM.
    assert name == "SIGTERM"
    if target == 1:
        assert "[1]<stderr>:partial-fc: rank 1: SIGTERM received" in text
        assert "partial-fc: rank 0: SIGTERM received" not in text  # rank 0 learnt it from the stop flag
    if sig == signal.SIGINT:  # the ranks saw what they see for SIGTERM (above): the resume is not repeated
        assert after_signal_step_is_consistent(out, step, manifest)
        return
    _check_stopped_checkpoint(out, step, manifest, uninterrupted, HOROVODRUN, _env(out, PFC_RESUME=1))


@pytest.mark.parametrize("target", ["launcher", 0], ids=["SIGTERM-to-mpirun", "SIGTERM-to-rank-0"])
def test_a_signal_under_mpirun_stops_every_rank_at_one_step_with_a_checkpoint(uninterrupted, tmp_path, target):
    out = tmp_path / "model"
    if target == "launcher":
        # The ranks get the SIGTERM STOP_GRACE s after mpirun (SIGKILL as long again): a run long enough that it
        # is still going then; the exact resume is the other case's.
        env = _env(out, NP=2, STOP_GRACE=5, PFC_MAX_STEPS=100000)
        rc, text, name, step, manifest = _stop(["bash", "run.sh"], env, out, target, signal.SIGTERM)
        assert rc == 1 and name == "SIGTERM", text[-3000:]  # mpirun's status when it was itself signalled
        assert after_signal_step_is_consistent(out, step, manifest, total=100000)
        return
    rc, text, name, step, manifest = _stop(["bash", "run.sh"], _env(out, NP=2), out, target, signal.SIGTERM)
    assert rc == EXIT_PREEMPTED and name == "SIGTERM", text[-3000:]  # mpirun: the first failing rank's status
    _check_stopped_checkpoint(out, step, manifest, uninterrupted, ["bash", "run.sh"], _env(out, NP=2, PFC_RESUME=1))


def _digest(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name.startswith("model"):
                with open(os.path.join(dirpath, name), "rb") as f:
                    out[os.path.relpath(os.path.join(dirpath, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


SECOND_SIGNAL = f"""
import os, signal, sys, time
from partial_fc import atomic, cli
from partial_fc.training import preemption, trainer

real_step, real_replace, real_stop = trainer.train_step, atomic.replace, preemption.Preemption.stop
stopping = []

def train_step(t, step, lr, head):
    if step == 6:
        os.kill(os.getpid(), signal.SIGTERM)  # the first signal: the run stops after step 6, at 7 done
    return real_step(t, step, lr, head)

def stop(self, *args):
    stopping.append(True)
    return real_stop(self, *args)

def replace(path, write):
    if stopping and len(stopping) == 1:  # the stop's save, at its first file: the second signal arrives
        stopping.append(True)
        time.sleep({SAME_REQUEST_S} + 0.5)
        print(f"second signal while writing {{path}}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)  # the handler exits before this ends
    return real_replace(path, write)

trainer.train_step, atomic.replace, preemption.Preemption.stop = train_step, replace, stop
sys.exit(cli.main(["train"]))
"""


@pytest.mark.parametrize("launcher", ["none", "horovodrun"])
def test_a_second_signal_during_the_save_exits_at_once_and_keeps_the_previous_checkpoint(tmp_path, launcher):
    out = tmp_path / "model"
    comm = "local" if launcher == "none" else "horovod"
    env = _env(out, PFC_COMM=comm, PFC_CHECKPOINT_STEPS=2)
    prefix = [] if launcher == "none" else HOROVODRUN[:-2]  # every rank signals itself, twice
    p = _run([*prefix, sys.executable, "-c", SECOND_SIGNAL], env, timeout=300)
    if launcher == "none":
        assert p.returncode == EXIT_PREEMPTED, p.stdout[-3000:]
    else:
        assert p.returncode == 1 and f"Exit code: {EXIT_PREEMPTED}" in p.stdout, p.stdout[-3000:]
    assert "second signal while writing" in p.stdout
    lines = [x for x in p.stdout.splitlines() if "partial-fc: error:" in x]
    assert lines and all("a second signal (SIGINT) while saving the stop's checkpoint: exiting now" in x
                         for x in lines), p.stdout[-3000:]
    assert "stopped by" not in p.stdout
    assert not [x for x in p.stdout.splitlines() if "Traceback" in x and (launcher == "none" or x.startswith("["))]
    # Steps 0..6 ran; the periodic saves wrote 2, 4 and 6 steps; the stop's save of 7 never got its manifest.
    assert checkpoint.latest(str(out)).endswith("model-0006.json")
    before = _digest(out)
    resume = [*prefix, "partial-fc", "train"]
    p = _run(resume, _env(out, PFC_COMM=comm, PFC_CHECKPOINT_STEPS=2, PFC_RESUME=1))
    assert p.returncode == 0, p.stdout[-3000:]
    assert "resumed from" in p.stdout and "model-0006.json" in p.stdout
    assert "left by a save that did not finish" in p.stdout  # the pieces of the step-7 save are cleared away
    assert all(before[k] == v for k, v in _digest(out).items() if k.startswith("model-0006"))
