#!/usr/bin/env bash
# The environment of one worker. Launched once per rank:
#     horovodrun -np 2 -H localhost:2 bash config.sh          (this machine, 2 workers)
#     horovodrun -np 16 -H ip1:8,ip2:8 bash config.sh         (two machines)
#     bash run.sh                                             (mpirun with a hostfile)
# Every PFC_* knob keeps a value already in the environment, so `PFC_SAMPLE_RATE=1.0 horovodrun ...`
# overrides it here. Unknown PFC_* names are rejected by the program, so a typo fails loudly.

# Synthetic identities until a dataset folder is given: nothing to download for a first run.
export PFC_DATASET=${PFC_DATASET:-synthetic}
# Sample 10% of each shard's centers per step: the Partial FC setting of the paper (all positives kept).
export PFC_SAMPLE_RATE=${PFC_SAMPLE_RATE:-0.1}
# ArcFace margins (s=64, m=0.5); cosface and combined are the other presets.
export PFC_LOSS=${PFC_LOSS:-arcface}
# A small embedding keeps the CPU demo quick; face models use 512.
export PFC_EMBEDDING_SIZE=${PFC_EMBEDDING_SIZE:-128}
# Per-worker batch; the global batch is this times the number of workers.
export PFC_BATCH_SIZE=${PFC_BATCH_SIZE:-32}
# Steps of the demo run.
export PFC_MAX_STEPS=${PFC_MAX_STEPS:-200}
# Horovod carries the FC's collectives; `mpi` switches them to mpi4py (launch with mpirun then).
export PFC_COMM=${PFC_COMM:-horovod}
# Two CPU workers share two cores here: one compute thread each avoids oversubscription.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export MXNET_CPU_WORKER_NTHREADS=${MXNET_CPU_WORKER_NTHREADS:-1}

# Until the full trainer lands, the Partial FC head runs alone on synthetic embeddings.
exec partial-fc demo "$@"
