#!/usr/bin/env bash
# The README's first command: installs everything, writes the built-in synthetic face dataset, trains
# MobileFaceNet with the Partial FC head (r = 0.1) on 2 CPU workers under horovodrun, and prints the
# verification table on the held-out pairs. Any PFC_* in the environment overrides config.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export PFC_DATA_DIR=${PFC_DATA_DIR:-work/example/data}
export PFC_OUTPUT=${PFC_OUTPUT:-work/example/model}
bash scripts/example_data.sh  # written once: 2,000 synthetic identities x 8 images and two .bin pair sets
# The example starts from scratch each time (a real run resumes instead: PFC_RESUME=1).
rm -rf "$PFC_OUTPUT"
bash config.sh check  # a bad PFC_* setting: one line and exit status 2, before horovodrun starts workers
horovodrun -np "${NP:-2}" -H "localhost:${NP:-2}" --gloo bash config.sh
echo "[example] checkpoints, train.log, metrics.jsonl and TensorBoard scalars are in $PFC_OUTPUT"
