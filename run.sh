#!/usr/bin/env bash
# Launcher only: starts `bash config.sh` on every rank with mpirun. The environment lives in config.sh.
#     bash run.sh                 # 2 workers on this machine
#     NP=16 HOSTFILE=hosts bash run.sh
# HOSTFILE lines look like `ip1 slots=8`. Without one, the workers run here (oversubscribed if need be).
# SIGTERM / SIGINT to mpirun reach the ranks as SIGTERM after STOP_GRACE seconds, SIGKILL after as many again:
# the time the ranks have to finish their step and save (docs/failures.md, "Stopping a run").
set -euo pipefail
cd "$(dirname "$0")"
NP=${NP:-2}
args=(-np "$NP" --bind-to none --map-by slot -x PATH -x LD_LIBRARY_PATH -x PYTHONPATH
      --mca odls_base_sigkill_timeout "${STOP_GRACE:-30}")
[ -n "${HOSTFILE:-}" ] && args+=(--hostfile "$HOSTFILE") || args+=(--oversubscribe)
# Open MPI refuses to start as root unless told; containers often run as root.
[ "$(id -u)" -ne 0 ] || args+=(--allow-run-as-root)
# Forward every PFC_* knob set by the caller, so overrides reach the remote ranks too.
for v in $(compgen -e | grep '^PFC_' || true); do args+=(-x "$v"); done
[ -f .venv/bin/activate ] && . .venv/bin/activate
# A bad setting stops here with one line and exit status 2, before mpirun starts any worker.
bash config.sh check >/dev/null
exec mpirun "${args[@]}" bash config.sh "$@"
