#!/usr/bin/env bash
# The environment of one worker. Launched once per rank:
#     horovodrun -np 2 -H localhost:2 bash config.sh          (this machine, 2 workers)
#     horovodrun -np 16 -H ip1:8,ip2:8 bash config.sh         (two machines)
#     bash run.sh                                             (mpirun with a hostfile)
# Every PFC_* knob keeps a value already in the environment, so `PFC_SAMPLE_RATE=1.0 horovodrun ...`
# overrides it here. Unknown PFC_* names are rejected by the program, so a typo fails loudly.
# The defaults below are the built-in CPU example (scripts/example.sh): a small synthetic face dataset.
# For Glint360K on 8 GPUs: PFC_DATA_DIR=/data/glint360k PFC_NETWORK=r100 PFC_EMBEDDING_SIZE=512
# PFC_BATCH_SIZE=64 PFC_LR=0.1 PFC_MAX_STEPS=0 (the dataset schedule) PFC_VERBOSE=2000.

# train.rec / train.idx / property and the verification *.bin sets; set it empty for random images.
export PFC_DATA_DIR=${PFC_DATA_DIR-work/example/data}
# Checkpoints, train.log, metrics.jsonl, TensorBoard scalars and config.json go here.
export PFC_OUTPUT=${PFC_OUTPUT:-work/example/model}
# MobileFaceNet: the network that trains in minutes on a CPU; r50/r100 are the accuracy settings.
export PFC_NETWORK=${PFC_NETWORK:-mbf}
# Sample 10% of each shard's centers per step: the Partial FC setting of the paper (all positives kept).
export PFC_SAMPLE_RATE=${PFC_SAMPLE_RATE:-0.1}
# ArcFace margins (s=64, m=0.5); cosface and combined are the other presets.
export PFC_LOSS=${PFC_LOSS:-arcface}
# A small embedding keeps the CPU example quick; face models use 512.
export PFC_EMBEDDING_SIZE=${PFC_EMBEDDING_SIZE:-128}
# Per-worker batch; the global batch is this times the number of workers.
export PFC_BATCH_SIZE=${PFC_BATCH_SIZE:-32}
# Learning rate for a global batch of 512 (scaled linearly); the short example runs hot.
export PFC_LR=${PFC_LR:-0.8}
export PFC_MEMORY_BANK_LR=${PFC_MEMORY_BANK_LR:-0.8}
# Steps of the example (about one pass over its 16,000 images), with lr / 10 at these steps.
export PFC_MAX_STEPS=${PFC_MAX_STEPS:-240}
export PFC_LR_STEPS=${PFC_LR_STEPS:-180}
# Log every 20 steps; verify on the .bin sets and checkpoint every 120 steps and at the end.
export PFC_FREQUENT=${PFC_FREQUENT:-20}
export PFC_VERBOSE=${PFC_VERBOSE:-120}
# Horovod carries the FC's collectives; `mpi` switches them to mpi4py (launch with mpirun then).
export PFC_COMM=${PFC_COMM:-horovod}
# Workers share the cores here: one compute thread each avoids oversubscription; one decode thread.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export MXNET_CPU_WORKER_NTHREADS=${MXNET_CPU_WORKER_NTHREADS:-1}
export PFC_DATA_THREADS=${PFC_DATA_THREADS:-1}

# `bash config.sh check` checks these settings once, before any worker starts: a bad one is then one line
# and exit status 2 (under a launcher each worker and the launcher report it). run.sh and scripts/example.sh
# do it; with horovodrun: bash config.sh check && horovodrun -np 8 -H localhost:8 bash config.sh
[ "${1:-}" != check ] || exec partial-fc check-config
exec partial-fc train "$@"
