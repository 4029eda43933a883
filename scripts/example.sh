#!/usr/bin/env bash
# Installs everything and runs the built-in example: two workers under horovodrun on this machine,
# with the knobs of config.sh (override any PFC_* on the command line, e.g. PFC_SAMPLE_RATE=1.0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
exec horovodrun -np "${NP:-2}" -H "localhost:${NP:-2}" --gloo bash config.sh
