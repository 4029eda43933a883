#!/usr/bin/env bash
# Launcher only: starts `bash config.sh` on every rank with mpirun. The environment lives in config.sh.
#     bash run.sh                 # 2 workers on this machine
#     NP=16 HOSTFILE=hosts bash run.sh
# HOSTFILE lines look like `ip1 slots=8`. Without one, the workers run here (oversubscribed if need be).
set -euo pipefail
cd "$(dirname "$0")"
NP=${NP:-2}
args=(-np "$NP" --bind-to none --map-by slot -x PATH -x LD_LIBRARY_PATH -x PYTHONPATH)
[ -n "${HOSTFILE:-}" ] && args+=(--hostfile "$HOSTFILE") || args+=(--oversubscribe)
# Open MPI refuses to start as root unless told; containers often run as root.
[ "$(id -u)" -ne 0 ] || args+=(--allow-run-as-root)
# Forward every PFC_* knob set by the caller, so overrides reach the remote ranks too.
for v in $(compgen -e | grep '^PFC_' || true); do args+=(-x "$v"); done
[ -f .venv/bin/activate ] && . .venv/bin/activate
exec mpirun "${args[@]}" bash config.sh "$@"
