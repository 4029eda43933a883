"""Launching small training runs from a test and reading what they wrote."""
import json
import os
import subprocess
import sys
import time

from partial_fc.bench.common import processes_with_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def small_run_env(output, max_steps, **extra) -> dict:
    """The environment of a few-step run on built-in synthetic data (40 classes, 8 identities, batch 4,
    embedding 16, mbf) through config.sh, writing to `output`, one thread per worker and no tensor fusion
    (so the per-step losses are exact across launchers and hosts); `extra` adds or overrides settings.
    The test's own PFC_*, and any MPI or Horovod variables of the shell that runs pytest, are left out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PFC_", "OMPI_", "HOROVOD_"))}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PFC_COMM="horovod", PFC_DATA_DIR="", PFC_NUM_CLASSES="40",
               PFC_SYNTHETIC_IDENTITIES="8", PFC_BATCH_SIZE="4", PFC_EMBEDDING_SIZE="16", PFC_NETWORK="mbf",
               PFC_FREQUENT="1", PFC_VERBOSE="1000", PFC_CHECKPOINT_STEPS="1000", PFC_TENSORBOARD="0",
               PFC_MAX_STEPS=str(max_steps), PFC_OUTPUT=str(output), OMP_NUM_THREADS="1",
               MXNET_CPU_WORKER_NTHREADS="1", HOROVOD_FUSION_THRESHOLD="0", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(cmd, env, timeout=400) -> subprocess.CompletedProcess:
    """`cmd` from the repository's root, stdout and stderr together, no standard input."""
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def wait_for_step(output, step, proc, deadline):
    """Return once the run writing to `output` has logged `step`; fail if `proc` ends first or time runs out."""
    path = os.path.join(output, "metrics.jsonl")
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        if os.path.exists(path) and any(json.loads(x).get("step", 0) >= step for x in open(path) if x.strip()):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached")


def rank_pid(output, rank, deadline) -> int:
    """The pid of the trainer process of `rank` (horovodrun or mpirun) whose PFC_OUTPUT is `output`, from
    /proc: the partial-fc process itself, not the bash of config.sh that started it."""
    ranks = [f"HOROVOD_RANK={rank}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()]
    while time.time() < deadline:
        for pid, env, cmd in processes_with_env(f"PFC_OUTPUT={output}".encode()):
            if any(r in env for r in ranks) and b"partial-fc" in b" ".join(cmd) and b"bash" not in cmd[0]:
                return pid
        time.sleep(0.3)
    raise AssertionError(f"rank {rank} of {output} not found")


def losses_by_step(output) -> dict:
    """{step: loss} from the run's metrics.jsonl; a resumed run repeats steps, and the last one counts."""
    by_step = {}
    with open(os.path.join(output, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "loss" in row:
                by_step[row["step"]] = row["loss"]
    return by_step
