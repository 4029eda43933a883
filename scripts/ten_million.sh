#!/usr/bin/env bash
# The title run of the paper on this machine: N = 10,000,000 classes, D = 512, r = 0.1, two workers under
# horovodrun, MobileFaceNet on random synthetic images, centers and momentum stored as float16.
#
#     scripts/ten_million.sh               # N = 10 M: needs ~21 GB for the two banks; run it on a quiet machine
#     scripts/ten_million.sh 1000000       # the same run at N = 1 M (a check that takes a few minutes)
#
# Prints the global loss of every step (rank 0) and, at the end, each rank's peak resident memory (VmHWM)
# next to the analytic size of its bank (head/memory_plan.py, bank_bytes). Writes no checkpoint (a 10 M-class one is
# 20 GB); any PFC_* set in the environment overrides the choices below, e.g. PFC_MAX_STEPS=20.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate

classes=${1:-10000000}
out=$(mktemp -d "${TMPDIR:-/tmp}/pfc-scale.XXXXXX")
trap 'rm -rf "$out"' EXIT

# Random images (no dataset folder) and the requested class count.
export PFC_DATA_DIR=
export PFC_DATASET=synthetic
export PFC_NUM_CLASSES=$classes
export PFC_NETWORK=${PFC_NETWORK:-mbf}
export PFC_EMBEDDING_SIZE=${PFC_EMBEDDING_SIZE:-512}
export PFC_SAMPLE_RATE=${PFC_SAMPLE_RATE:-0.1}
# Half-size bank: 10 M x 512 centers + momentum in float16 are 10.24 GB per rank instead of 20.5 GB.
export PFC_BANK_DTYPE=${PFC_BANK_DTYPE:-float16}
# Host (numpy) storage: the pip build of MXNet 1.9.1 has no 64-bit tensor sizes, so one NDArray holds at most
# 2^31 - 1 values and a 5 M x 512 shard does not fit in one; numpy has no such limit. (Host storage is also
# what a checkpoint writes without a copy.)
export PFC_MEMORY_BANK=${PFC_MEMORY_BANK:-host}
# The backbone's CPU training memory grows ~0.14 GB per sample (mbf, 112x112): 4 leaves the 10 M run ~2 GB
# of headroom on a 24 GiB machine (8 would leave ~1).
export PFC_BATCH_SIZE=${PFC_BATCH_SIZE:-4}
export PFC_MAX_STEPS=${PFC_MAX_STEPS:-12}
# 16 recurring identities spread over the whole class range (each its own image): every step still samples
# 10 % of all 10 M centers, but the identities come back, as a real dataset's do, so the loss can fall.
# 0 draws every label afresh from all classes (a step's cost is the same; nothing is learnable then).
export PFC_SYNTHETIC_IDENTITIES=${PFC_SYNTHETIC_IDENTITIES:-16}
export PFC_LR=${PFC_LR:-0.8}
export PFC_MEMORY_BANK_LR=${PFC_MEMORY_BANK_LR:-0.8}
export PFC_LR_STEPS=${PFC_LR_STEPS:-1000000}
export PFC_FREQUENT=1
export PFC_VERBOSE=1000000
export PFC_TENSORBOARD=0
export PFC_SAVE_CHECKPOINTS=${PFC_SAVE_CHECKPOINTS:-0}
export PFC_OUTPUT=$out
export PFC_COMM=horovod
# Two workers on two cores: one compute thread each.
export OMP_NUM_THREADS=1 MXNET_CPU_WORKER_NTHREADS=1

echo "ten_million: N=$PFC_NUM_CLASSES D=$PFC_EMBEDDING_SIZE r=$PFC_SAMPLE_RATE bank=$PFC_BANK_DTYPE/$PFC_MEMORY_BANK" \
     "batch=$PFC_BATCH_SIZE/worker steps=$PFC_MAX_STEPS identities=$PFC_SYNTHETIC_IDENTITIES, 2 workers"
horovodrun -np 2 -H localhost:2 --gloo python -c '
import os, re, sys
from partial_fc import cli, config
from partial_fc.head.memory_plan import bank_bytes
from partial_fc.head.sharding import shard_range

rc = cli.main(["train"])
cfg = config.load()
rank = int(os.environ.get("HOROVOD_RANK", "0"))  # the launcher says which rank this process was
_, count = shard_range(cfg.num_classes, 2, rank)
status = open("/proc/self/status").read()
peak = int(re.search(r"VmHWM:\s*(\d+) kB", status).group(1)) * 1024
bank = bank_bytes(count, cfg.embedding_size, cfg.bank_dtype)
print(f"ten_million: rank {rank}: peak RSS {peak / 2**30:.2f} GiB, bank {bank / 2**30:.2f} GiB "
      f"({count:,} rows x {cfg.embedding_size} {cfg.bank_dtype}), peak - bank {(peak - bank) / 2**30:.2f} GiB",
      flush=True)
sys.exit(rc)
'
