#!/usr/bin/env bash
# The rates study on the built-in example: the example's data, settings and steps (config.sh) trained at
# r = 1.0, 0.3 and 0.1, one run after another on 2 workers, and one table of final loss, verification
# accuracy, samples/s, centers kept and peak memory per rank (partial-fc study rates).
#     bash scripts/study_rates.sh                 # the table; the runs stay in work/study/rates
#     bash scripts/study_rates.sh --readme        # and write the table into the README's "rates" block
# About three times the example's training time; run it on an otherwise idle machine (its speeds compare).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export PFC_DATA_DIR=${PFC_DATA_DIR:-work/example/data}
bash scripts/example_data.sh
bash config.sh check
table=$(mktemp "${TMPDIR:-/tmp}/pfc-rates.XXXXXX")
trap 'rm -f "$table"' EXIT
partial-fc study rates --rates "${RATES:-1.0,0.3,0.1}" --workers "${NP:-2}" --overwrite | tee "$table"
[ "${1:-}" != --readme ] || python scripts/readme_blocks.py rates "$table"
