#!/usr/bin/env bash
# The fine-tuning measurement of docs/finetuning.md: a base mbf trained on 100 synthetic identities, then
# fine-tuned on 50 others at W = 2 with random centers, random centers and a frozen backbone for the first
# epoch, and imprinted centers, at a backbone learning rate well below the base run's; one line per run with
# the loss at step 0, the final loss and the verification accuracies. 2 to 3 minutes per run on the shared
# 2-core CPU machine (about 9 minutes more for the base model; one already in WORK is reused).
#   WORK=/tmp/ft bash scripts/finetune_study.sh          # SEEDS="0 1 2" MODES="random freeze imprint" STEPS=36
#   WORK=/tmp/ft STEPS=12 MODES="random imprint imprint_slowhead" bash scripts/finetune_study.sh   # one epoch
#   WORK=/tmp/ft FT_IDENTITIES=500 FT_IMAGES=6 FT_PAIRS=1000 STEPS=24 MODES="random imprint" bash scripts/finetune_study.sh
#                                            # many identities, a fraction of an epoch: each class seen once or twice
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export OMP_NUM_THREADS=1 MXNET_CPU_WORKER_NTHREADS=1 HOROVOD_FUSION_THRESHOLD=0
W=${WORK:-work/finetune}
STEPS=${STEPS:-36}
FT_LR=${FT_LR:-0.1}          # backbone: 1/8 of the base run's 0.8
FT_HEAD_LR=${FT_HEAD_LR:-0.8}  # centers: the base run's rate, so random centers can still be learnt in a few epochs
FREEZE=${FREEZE:-12}         # one epoch of 400 images at a global batch of 32
FT_IDENTITIES=${FT_IDENTITIES:-50} FT_IMAGES=${FT_IMAGES:-8} FT_PAIRS=${FT_PAIRS:-300}  # the fine-tuning data
FT=$W/ft                     # the default data keeps its first name; any other gets its own folder and runs
tag=""
if [ "$FT_IDENTITIES/$FT_IMAGES/$FT_PAIRS" != 50/8/300 ]; then
  tag=_${FT_IDENTITIES}x${FT_IMAGES}_${FT_PAIRS}p
  FT=$W/ft$tag
fi
mkdir -p "$W"
[ -f "$W/base/train.idx" ] || partial-fc synth --output "$W/base" --identities 100 --images-per-identity 12 \
  --pairs 300 --seed 1 --quiet
[ -f "$FT/train.idx" ] || partial-fc synth --output "$FT" --identities "$FT_IDENTITIES" \
  --images-per-identity "$FT_IMAGES" --pairs "$FT_PAIRS" --seed 2 --quiet
BASE=$W/base_model/model-0120.json
if [ ! -f "$BASE" ]; then
  rm -rf "$W/base_model"
  PFC_DATA_DIR=$W/base PFC_OUTPUT=$W/base_model PFC_NETWORK=mbf PFC_EMBEDDING_SIZE=128 PFC_BATCH_SIZE=16 \
    PFC_LR=0.8 PFC_MEMORY_BANK_LR=0.8 PFC_MAX_STEPS=120 PFC_LR_STEPS=90 PFC_VERBOSE=120 PFC_DATA_THREADS=1 \
    PFC_TENSORBOARD=0 horovodrun -np 2 -H localhost:2 --gloo partial-fc train > "$W/base.log" 2>&1
fi
[ -f "$W/pretrained$tag.json" ] || partial-fc verify "$BASE" "$FT/synth_val.bin" "$FT/synth_hard.bin" --json \
  > "$W/pretrained$tag.json" 2>/dev/null
for seed in ${SEEDS:-0 1 2}; do
  for mode in ${MODES:-random freeze imprint}; do
    out=$W/ft${tag}_${mode}_${STEPS}steps_$seed
    extra=()
    case $mode in
      freeze) extra=(PFC_FREEZE_BACKBONE_STEPS=$FREEZE) ;;
      imprint) extra=(PFC_INIT_CENTERS=imprint) ;;
      imprint_slowhead) extra=(PFC_INIT_CENTERS=imprint PFC_MEMORY_BANK_LR=$FT_LR) ;;  # the head needs less
    esac
    if [ ! -f "$out/metrics.jsonl" ] || ! grep -q accuracy "$out/metrics.jsonl"; then
      rm -rf "$out"
      env PFC_DATA_DIR="$FT" PFC_PRETRAINED="$BASE" PFC_NETWORK=mbf PFC_EMBEDDING_SIZE=128 PFC_BATCH_SIZE=16 \
        PFC_LR="$FT_LR" PFC_MEMORY_BANK_LR="$FT_HEAD_LR" PFC_MAX_STEPS="$STEPS" PFC_LR_STEPS=100000 \
        PFC_FREQUENT=1 PFC_VERBOSE=100000 PFC_TENSORBOARD=0 PFC_DATA_THREADS=1 PFC_SAVE_CHECKPOINTS=0 \
        PFC_SEED="$seed" "${extra[@]}" PFC_OUTPUT="$out" \
        horovodrun -np 2 -H localhost:2 --gloo partial-fc train > "$out.log" 2>&1
    fi
    python - "$out/metrics.jsonl" "$mode" "$seed" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
loss = [r for r in rows if "loss" in r]
acc = [r for r in rows if "val/synth_val/accuracy" in r][-1]
last = loss[-12:]  # the final loss as the mean over the last epoch: single steps of 32 images are noisy
print(f"{sys.argv[2]:>16} seed {sys.argv[3]}  loss {loss[0]['loss']:7.2f} -> {loss[-1]['loss']:7.2f}"
      f" (last 12 steps {sum(r['loss'] for r in last) / len(last):6.2f})"
      f"  synth_val {acc['val/synth_val/accuracy']:.4f}  synth_hard {acc['val/synth_hard/accuracy']:.4f}")
EOF
  done
done
