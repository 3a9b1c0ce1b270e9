#!/usr/bin/env bash
# Trains every kind at the nsa shape from one seed in fp32 and in bf16 (a few hundred steps) and
# prints both eval losses side by side with their relative difference: the check that bf16 mixed
# precision trains to the same place. On a GPU machine, from the repository root:
#   tools/train_precision_check.sh [build/kvcompress] [steps]
# KINDS="grouped_mlp mlp" limits it to those kinds.
set -euo pipefail
KVC=${1:-build/kvcompress}
STEPS=${2:-300}
OUT_DIR=${OUT_DIR:-$(mktemp -d)}
mkdir -p "$OUT_DIR"
shape=(--batch 4 --heads 8 --seq 8192 --block 16 --dim-head 64 --queries 512)
printf '%-22s %12s %12s %9s\n' kind "fp32 eval" "bf16 eval" "rel diff"
for kind in ${KINDS:-conv efficient_conv attention_pool scaled_attention_pool grouped_mlp enhanced_mlp mlp}; do
  declare -A eval_loss=()
  for p in fp32 bf16; do
    "$KVC" train --compressor "$kind" "${shape[@]}" --steps "$STEPS" --eval-every "$STEPS" \
      --save-every 0 --precision "$p" --device cuda --progress none --seed 0 \
      --out "$OUT_DIR/$kind-$p" > "$OUT_DIR/$kind-$p.log" 2>&1
    # The last metrics row with an eval loss (columns: step, loss, eval_loss, ...).
    eval_loss[$p]=$(awk -F, 'NR > 1 && $3 != "" && $3 != "nan" { e = $3 } END { print e }' \
      "$OUT_DIR/$kind-$p/metrics.csv")
  done
  awk -v k="$kind" -v a="${eval_loss[fp32]}" -v b="${eval_loss[bf16]}" \
    'BEGIN { d = (b - a) / a; if (d < 0) d = -d; printf "%-22s %12.4e %12.4e %8.2f%%\n", k, a, b, 100 * d }'
done
