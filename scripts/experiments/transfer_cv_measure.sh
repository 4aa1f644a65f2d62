#!/usr/bin/env bash
# Measured five-fold tables of bundles/covid19_ct_transfer_classification/docs/README.md (seed 004, Table 2 shape)
# on the staged COVID19-CT (UCSD-AI4H) subset, every run on the same patient-grouped stratified folds (--seed 0):
#   resnet18_canvas    ResNet-18 on its Table 1 canvas scaled to 96 x 132 (H x W), LAMB
#   resnet18_stretch   the same with stretch.json (stretch-resize instead of the aspect-preserving canvas)
#   resnet18_adam      the same canvas with adam.json (Adam instead of LAMB; adam.json has no weight decay)
#   resnet18_lamb_wd0  LAMB as in resnet18_canvas but without weight decay (separates the optimiser from the decay)
#   squeezenet_canvas  SqueezeNet 1.0 on its Table 1 canvas scaled to 96 x 126, LAMB
# 10 epochs with the paper's step schedule scaled (lr drops at epochs 5, 7, 8, 9), batch 32, weight decay 1, random
# initialisation (no ImageNet weights can be downloaded here; pretrained "auto" warns and starts from random).
# Usage: bash scripts/experiments/transfer_cv_measure.sh [RUN ...]   (default: all five; RESUME=1 continues)
# Work folders: ${TRANSFER_WORK:-/tmp/transfer_cv}; results (cv_summary.json, cv_table.md, cv_confusion.png, per-fold
# metrics.json, timings) go to docs/experiments/transfer/<run>/; the combined table:
#   python scripts/experiments/transfer_cv_summary.py docs/experiments/transfer
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
work=${TRANSFER_WORK:-/tmp/transfer_cv}
results=$repo/docs/experiments/transfer
B=bundles/covid19_ct_transfer_classification
mkdir -p "$work" "$results"
medxai datalist covid_ct_ucsd_manifest "${TRANSFER_DATA:-../shared/data}/covid_ct_ucsd" --output "$work/datalist.json" \
  --relative False > "$work/datalist_summary.txt"
common=(--datalist "$work/datalist.json" --n_folds 5 --seed 0 --num_epochs 10 --lr_milestones "[5,7,8,9]"
        --val_interval 10 --num_workers 0)
[ -n "${RESUME:-}" ] && common+=(--resume True)
run() {  # name, medxai cv options...
  local name=$1 start; shift; start=$(date +%s)
  medxai cv $B --output_dir "$work/$name" "${common[@]}" "$@" > "$work/$name.log" 2>&1 || { tail -40 "$work/$name.log"; exit 1; }
  mkdir -p "$results/$name"
  cp "$work/$name"/cv_{summary.json,table.md,table.csv,confusion.png} "$results/$name/"
  for k in 0 1 2 3 4; do cp "$work/$name/fold_$k/eval/metrics.json" "$results/$name/fold_${k}_metrics.json"; done
  printf '{"run": "%s", "wall_s": %d, "date": "%s", "machine": "%s, %s CPU cores, no GPU", "commit": "%s", "omp_threads": "%s", "options": "%s"}\n' \
    "$name" $(( $(date +%s) - start )) "$(date -u +%FT%TZ)" "$(uname -m)" "$(nproc)" "$(git rev-parse --short HEAD)" \
    "${OMP_NUM_THREADS:-unset}" "$*" > "$results/$name/run.json"
}
for name in ${@:-resnet18_canvas resnet18_stretch resnet18_adam resnet18_lamb_wd0 squeezenet_canvas}; do
  case $name in
    resnet18_canvas) run $name --overlays configs/real_ucsd.json --backbone resnet18 --canvas_hw "[96,132]" \
      --title "ResNet-18, canvas 96x132, LAMB" ;;
    resnet18_stretch) run $name --overlays configs/real_ucsd.json,configs/stretch.json --backbone resnet18 \
      --canvas_hw "[96,132]" --title "ResNet-18, stretch 96x132, LAMB" ;;
    resnet18_adam) run $name --overlays configs/real_ucsd.json,configs/adam.json --backbone resnet18 \
      --canvas_hw "[96,132]" --title "ResNet-18, canvas 96x132, Adam" ;;
    resnet18_lamb_wd0) run $name --overlays configs/real_ucsd.json --backbone resnet18 --canvas_hw "[96,132]" \
      --weight_decay 0.0 --title "ResNet-18, canvas 96x132, LAMB, no weight decay" ;;
    squeezenet_canvas) run $name --overlays configs/real_ucsd.json --backbone squeezenet1_0 --canvas_hw "[96,126]" \
      --title "SqueezeNet 1.0, canvas 96x126, LAMB" ;;
    *) echo "unknown run $name" >&2; exit 2 ;;
  esac
done
