#!/usr/bin/env bash
# Launcher only: starts `bash config.sh` on every rank with mpirun. The environment lives in config.sh.
#     bash run.sh                 # 2 workers on this machine
#     NP=16 HOSTFILE=hosts bash run.sh
# HOSTFILE lines look like `ip1 slots=8`. Without one, the workers run here (oversubscribed if need be).
# Other hosts: passwordless ssh to each, the same paths there, OMPI_MCA_* (plm_rsh_agent, btl_tcp_if_include,
# oob_tcp_if_include) in the environment for Open MPI itself (docs/multihost.md).
# SIGTERM / SIGINT to mpirun reach the ranks as SIGTERM after STOP_GRACE seconds, SIGKILL after as many again:
# the time the ranks have to finish their step and save (docs/failures.md, "Stopping a run").
set -euo pipefail
cd "$(dirname "$0")"
NP=${NP:-2}
args=(-np "$NP" --bind-to none --map-by slot --mca odls_base_sigkill_timeout "${STOP_GRACE:-30}")
[ -n "${HOSTFILE:-}" ] && args+=(--hostfile "$HOSTFILE") || args+=(--oversubscribe)
# Open MPI refuses to start as root unless told; containers often run as root.
[ "$(id -u)" -ne 0 ] || args+=(--allow-run-as-root)
[ -f .venv/bin/activate ] && . .venv/bin/activate
# mpirun gives a rank on another host only the variables -x names (local ranks inherit everything), so forward
# the caller's PFC_* knobs, the venv's PATH, and the thread and Horovod settings: a HOROVOD_FUSION_THRESHOLD on
# one host only fuses different tensors there and the ranks' reductions disagree (MPI_ERR_TRUNCATE).
for v in $(compgen -e | grep -E '^(PFC_|HOROVOD_|MXNET_|OMP_|OPENBLAS_)|^(PATH|LD_LIBRARY_PATH|PYTHONPATH|PYTHONUNBUFFERED|VIRTUAL_ENV)$' \
           || true); do args+=(-x "$v"); done
# A bad setting stops here with one line and exit status 2, before mpirun starts any worker.
bash config.sh check >/dev/null
exec mpirun "${args[@]}" bash config.sh "$@"
