#!/usr/bin/env bash
# Measured Table 4 / Table 5 shapes of bundles/brain_ventricle_segmentation/docs/README.md (seed 003 sec. 4.2):
# slice Dice on thick, thin and mixed test slices for the method (sub-pixel U-Net, L_S + beta L_T with the Pearson
# chi-square divergence), the U-Net and U-Net++ baselines (same training), the loss ablation (L_S only, L_T only)
# and the KL form of L_T, every run with the shipped demo.json (CPU size) and ITERATIONS training iterations.
#   data "synthetic": the synthetic brain demo set (thick and thin volumes of the same subjects; test: 2 subjects)
#   data "real":      FreeSurfer "bert" (1 mm and 5 mm): training = synthetic training volumes + bert 5 mm
#                     (labelled) + bert 1 mm (unlabelled), test = bert 1 mm (and its 5 mm, seen in training)
# Usage: bash scripts/experiments/brain_measure.sh DATA [RUN ...]   RUN in: ours unet unetplusplus ls_only lt_only kl
# EVAL_ONLY=1 re-runs only the evaluation of runs already trained in the work folder (with the current evaluate.json).
# Work folders: ${BRAIN_WORK:-/tmp/brain_measure}; results go to docs/experiments/brain/<data>/<run>/; the tables:
#   python scripts/experiments/brain_summary.py docs/experiments/brain
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
data=${1:?usage: brain_measure.sh synthetic|real [RUN ...]}; shift
work=${BRAIN_WORK:-/tmp/brain_measure}/$data
results=$repo/docs/experiments/brain/$data
iterations=${ITERATIONS:-2000}
B=$repo/bundles/brain_ventricle_segmentation
mkdir -p "$work" "$results"
dataset=()
if [ "$data" = real ]; then
  python - "$work/dataset" "${BRAIN_DATA:-../shared/data}/brain_mri_ventricles_freesurfer_bert" <<'PY'
import sys
from medxai.data.datasets.brain import bert_thick_thin_datalist
from medxai.data.demo import ensure_demo_dataset
print(bert_thick_thin_datalist(sys.argv[2], ensure_demo_dataset("brain"), sys.argv[1]))
PY
  # bert is in training and in test by design (see above): the dataset check compares training and validation only
  dataset=(--dataset_dir "$work/dataset" --validate_data_args#optional_splits "[]")
fi
run() {  # name, overlay files...
  local name=$1 start; shift; start=$(date +%s)
  local folder=$work/$name train_s
  local configs="'$folder/configs/train.json'"
  for overlay in "$@"; do configs+=",'$folder/configs/$overlay'"; done
  configs+=",'$folder/configs/demo.json'"
  if [ -n "${EVAL_ONLY:-}" ]; then
    cp "$B/configs/evaluate.json" "$folder/configs/evaluate.json"
    train_s=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['train_s'])" "$results/$name/run.json")
  else
    rm -rf "$folder"; mkdir -p "$folder"; cp -r "$B/configs" "$folder/configs"
    python -m monai.bundle run training --config_file "[$configs]" --bundle_root "$folder" "${dataset[@]}" \
      --num_iterations "$iterations" > "$folder/train.log" 2>&1 || { tail -40 "$folder/train.log"; exit 1; }
    train_s=$(( $(date +%s) - start ))
  fi
  python -m monai.bundle run --config_file "[${configs/demo.json\'/evaluate.json\'},'$folder/configs/demo.json']" \
    --bundle_root "$folder" "${dataset[@]}" > "$folder/evaluate.log" 2>&1 || { tail -40 "$folder/evaluate.log"; exit 1; }
  mkdir -p "$results/$name"
  cp "$folder/eval"/{metrics.json,dice_table.json,slice_dice.csv,dice_by_group.png,latent_space.csv} "$results/$name/"
  [ "$name" = ours ] && cp "$folder/eval/latent_space.png" "$results/$name/"  # the figure of the method only
  printf '{"run": "%s", "overlays": "%s", "iterations": %d, "train_s": %d, "wall_s": %d, "date": "%s", "machine": "%s, %s CPU cores, no GPU", "commit": "%s", "omp_threads": "%s"}\n' \
    "$name" "$*" "$iterations" "$train_s" $(( $(date +%s) - start )) "$(date -u +%FT%TZ)" "$(uname -m)" "$(nproc)" \
    "$(git rev-parse --short HEAD)" "${OMP_NUM_THREADS:-unset}" > "$results/$name/run.json"
  echo "$data/$name: $(python -c "import json,sys; print(json.load(open(sys.argv[1]))['slice_dice'])" "$results/$name/metrics.json")"
}
for name in ${@:-ours unet unetplusplus ls_only lt_only kl}; do
  case $name in
    ours) run $name ;;
    unet) run $name unet.json ;;
    unetplusplus) run $name unetplusplus.json ;;
    ls_only) run $name ls_only.json ;;
    lt_only) run $name lt_only.json ;;
    kl) run $name kl.json ;;
    *) echo "unknown run $name" >&2; exit 2 ;;
  esac
done
