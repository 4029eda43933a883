#!/usr/bin/env bash
# Installs everything Partial FC needs on a fresh Debian machine with Python 3.11: system packages (Open MPI;
#   openssh-server, whose sshd the multi-host test tier starts as its second host), a virtual environment with
#   the pinned stack of docs/design.md §2, Horovod 0.28.1 built from source with MXNet, Gloo and MPI (and the
#   fixes in scripts/patches), and this project (editable).
#
# Usage: bash scripts/install.sh [--cuda 112]     (--cuda picks mxnet-cu112 and Horovod with NCCL)
#
# The venv is .venv in the repository, rebuilt only when its inputs (this script from "virtual environment" on,
# requirements.txt, the CUDA choice, the Python version) change; re-running on an unchanged tree takes seconds.
# The compiled Horovod wheel is cached outside the tree (PFC_CACHE_DIR, default ~/.cache/partial-fc), so a
# fresh clone does not compile it again.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cuda=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) cuda="${2:?--cuda needs a version such as 112 or 117}"; shift 2 ;;
    --cuda=*) cuda="${1#--cuda=}"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$1' (known: --cuda VERSION)" >&2; exit 2 ;;
  esac
done
case "$cuda" in
  "") mxnet_pkg="mxnet==1.9.1" ;;
  101|102|110|112|113|114|115|116|117) mxnet_pkg="mxnet-cu${cuda}==1.9.1" ;;
  *) echo "install.sh: --cuda $cuda is not an mxnet 1.9.1 build (known: 101 102 110 112 113 114 115 116 117)" >&2; exit 2 ;;
esac

log() { echo "[install] $*"; }

# --- python ---------------------------------------------------------------------------------
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
"$py" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
  echo "install.sh: Python 3.11 is required (mxnet 1.9.1 needs numpy<1.24, which has no 3.12 wheel); found $("$py" --version 2>&1)" >&2
  exit 1
}

# --- system packages -------------------------------------------------------------------------
need_apt=()
command -v mpirun >/dev/null 2>&1 || need_apt+=(openmpi-bin)
[ -e /usr/include/x86_64-linux-gnu/openmpi/mpi.h ] || [ -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] \
  || command -v mpicxx >/dev/null 2>&1 || need_apt+=(libopenmpi-dev)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
# A Debian system Python lacks venv/ensurepip and the headers Horovod compiles against.
"$py" -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
"$py" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need_apt+=(python3-dev)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v patch >/dev/null 2>&1 || need_apt+=(patch)  # this project's fixes to Horovod (scripts/patches)
# A current OpenBLAS for MXNet (see "MXNet's BLAS" below); the OpenMP build, as MXNet's own.
system_openblas=/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0
[ -e "$system_openblas" ] || need_apt+=(libopenblas0-openmp)
# The multi-host test tier (tests/multihost) starts an sshd of its own on 127.0.0.2 as the second host; no
# system sshd is configured or used.
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  # No package may start a service here: openssh-server would otherwise start a system sshd listening on
  # every interface where the init system allows it. A policy-rc.d that refuses every start, for this
  # install only (one that exists already is left as it is).
  policy=/usr/sbin/policy-rc.d own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee "$policy" >/dev/null && $sudo_cmd chmod +x "$policy" && own_policy=1
  fi
  set +e
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  rc=$?
  set -e
  [ "$own_policy" = 0 ] || $sudo_cmd rm -f "$policy"
  [ "$rc" = 0 ] || { echo "install.sh: apt-get install ${need_apt[*]} failed (exit $rc)" >&2; exit "$rc"; }
fi

# --- virtual environment ---------------------------------------------------------------------
# Only the part of this script from this section on is an input: the system packages above do not change the
# venv, so adding one must not rebuild it.
patches=("$here"/scripts/patches/horovod-0.28.1-*.patch)
patches_sum="$(cat "${patches[@]}" | sha256sum | cut -c1-12)"
key="$( (sed -n '/^# --- virtual environment/,$p' "$here/scripts/install.sh"; cat "$here/requirements.txt"
         echo "cuda=$cuda patches=$patches_sum"; "$py" --version) | sha256sum | cut -c1-16)"
# The compiled Horovod wheel is kept outside the tree, so a fresh clone installs it in seconds instead
# of compiling again. pip's own cache serves the other wheels.
cache_root="${PFC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/partial-fc}"
# The wheel depends only on what Horovod compiles: its patches, the mxnet build and the Python version.
wheels="$cache_root/horovod-0.28.1-$(echo "$mxnet_pkg $("$py" --version) $patches_sum" | sha256sum | cut -c1-12)"
venv="$here/.venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "$(cat "$venv/.pfc-inputs" 2>/dev/null)" != "$key" ]; then
  log "creating $venv (inputs changed or first install)"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  pip="$venv/bin/python -m pip"
  $pip install -q --upgrade "pip>=24" "setuptools>=69,<80" wheel "cmake>=3.13,<4"
  $pip install -q -r "$here/requirements.txt" "$mxnet_pkg"
  if ! ls "$wheels"/horovod-0.28.1-*.whl >/dev/null 2>&1; then
    # Horovod compiles against the mxnet now in the venv, hence --no-build-isolation.
    hv_env=(HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1
            HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1)
    [ -z "$cuda" ] || hv_env+=(HOROVOD_GPU_OPERATIONS=NCCL)
    # From its source release with this project's fixes, each patch saying what it fixes and why.
    rm -rf "$wheels.src" "$wheels.tmp"
    $pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$wheels.src" horovod==0.28.1
    tar -xzf "$wheels.src"/horovod-0.28.1.tar.gz -C "$wheels.src"
    for p in "${patches[@]}"; do
      log "patching horovod: $(basename "$p")"
      patch -d "$wheels.src/horovod-0.28.1" -p1 --forward --quiet < "$p"
    done
    log "compiling horovod 0.28.1 (${hv_env[*]}): about 2-5 minutes"
    mkdir -p "$wheels"
    env "${hv_env[@]}" MAKEFLAGS="-j$(nproc)" $pip wheel -q --no-deps --no-build-isolation --no-cache-dir \
      -w "$wheels.tmp" "$wheels.src/horovod-0.28.1"
    mv "$wheels.tmp"/horovod-*.whl "$wheels"/ && rm -rf "$wheels.tmp" "$wheels.src"
  fi
  $pip install -q "$wheels"/horovod-0.28.1-*.whl
  "$venv/bin/python" - <<'PY'
import horovod.mxnet as hvd
assert hvd.mpi_built() and hvd.gloo_built(), "horovod was built without MPI or Gloo"
PY
  echo "$key" > "$venv/.pfc-inputs"
else
  log "reusing $venv"
fi

# The project itself: editable, no dependency resolution (the venv is already pinned).
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$here"
# --- MXNet's BLAS ----------------------------------------------------------------------------
# mxnet 1.9.1 bundles OpenBLAS 0.3.13, whose CPU table predates the CPUs this project runs on: on a model it
# does not know (newer CPUs, VMs that mask the model) it falls back to a pre-AVX kernel, and MXNet's matmuls
# run at a third of numpy's rate (docs/performance.md, "BLAS kernel"). libmxnet.so finds libopenblas.so.0
# next to itself (RPATH $ORIGIN), so the bundled file is swapped for a link to Debian's 0.3.21 (the same
# OpenMP build, every symbol libmxnet takes from it); the original is kept beside it as .bundled. Without
# Debian's library the bundled one stays, and config.prepare_libraries() picks its kernel instead.
mxnet_blas="$("$venv/bin/python" -c 'import importlib.util, os; print(os.path.join(importlib.util.find_spec("mxnet").submodule_search_locations[0], "libopenblas.so.0"))')"
if [ -e "$system_openblas" ] && [ "$(readlink "$mxnet_blas" || true)" != "$system_openblas" ]; then
  [ -e "$mxnet_blas.bundled" ] || mv "$mxnet_blas" "$mxnet_blas.bundled"
  ln -sfn "$system_openblas" "$mxnet_blas"
  log "MXNet uses $system_openblas (bundled OpenBLAS kept as $mxnet_blas.bundled)"
fi
"$venv/bin/python" -c 'import mxnet' || { echo "install.sh: mxnet does not load with $mxnet_blas" >&2; exit 1; }
log "ready: source $here/.venv/bin/activate"
