#!/usr/bin/env bash
# The built-in example's dataset, written to $PFC_DATA_DIR (default work/example/data) unless it is there
# already; scripts/example.sh and scripts/study_rates.sh run it, so both train on the same data.
# 2,000 identities x 8 images: at r = 0.1 each of 2 shards keeps 100 of its 1,000 centers per step, and the
# global batch's ~30 classes on a shard leave most of those rows to drawn negatives: Partial FC's sampling
# at work. Milder nuisances than the synth default and 300 pairs per .bin: learnable within the few minutes
# of CPU training of the example, and quick to verify.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${PFC_DATA_DIR:-work/example/data}
args=(--identities 2000 --images-per-identity 8 --nuisance 0.5 --pairs 300)
# A folder this script wrote with other arguments (an older example) is written again; any other dataset in
# PFC_DATA_DIR is left alone.
stamp="$data/example-data.args"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "${args[*]}" ]; then rm -rf "$data"; fi
if [ ! -f "$data/train.idx" ]; then
  .venv/bin/partial-fc synth --output "$data" "${args[@]}"
  echo "${args[*]}" > "$stamp"
fi
