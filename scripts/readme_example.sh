#!/usr/bin/env bash
# Regenerates the README's example output (its "generated: example" block) from a real run of the example:
#     bash scripts/readme_example.sh              # runs scripts/example.sh, the README's first command
#     bash scripts/readme_example.sh LOG          # uses LOG, the output of the same command run before: the
#                                                 # r = 0.1 run of the rates study (work/study/rates/r0.1.log)
# The example is deterministic at 2 workers for a seed, apart from its timings. Run it on an otherwise idle
# machine after changing the example (config.sh, scripts/example.sh) or anything that moves its figures; the
# tests fail while the block is older than config.sh or the script.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${PFC_DATA_DIR:-work/example/data}
if [ $# -gt 0 ]; then
  .venv/bin/python scripts/readme_blocks.py example "$1" "$data" \
    --source "the r = 0.1 run of scripts/study_rates.sh (the example's command, data and settings)"
  exit 0
fi
log=$(mktemp "${TMPDIR:-/tmp}/pfc-example.XXXXXX")
trap 'rm -f "$log"' EXIT
bash scripts/example.sh 2>&1 | tee "$log"
.venv/bin/python scripts/readme_blocks.py example "$log" "$data"
