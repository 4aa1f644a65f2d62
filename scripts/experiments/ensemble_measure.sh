#!/usr/bin/env bash
# Measured figures of bundles/covid19_cxr_ensemble_classification/docs/README.md (DeepCOVIDExplainer, seed 002),
# each through the bundle's own configs:
#   demo       the CPU demo exactly as `medxai demo --bundle covid19_cxr_ensemble_classification` runs it
#              (train.json + demo.json, evaluate.json, inference.json + explain.json)
#   synthetic  the demo phantoms (demo.json's data: 240 radiographs, three classes via label3)
#   real       the staged ieee8023 + Kermany images (medxai datalist deepcovid_three_class, patient-disjoint)
# For every network in $NETS (default the paper's six): train.json + torchvision_cpu.json (64 px, 16 epochs,
# 4 cycles, a snapshot per cycle, best snapshot by validation accuracy), evaluate.json on the test split with the
# chosen snapshot, and with ensemble.json the SCPA and PM ensembles of its snapshots. Then ensembles of networks
# (Table II pairs and the triple; each network's chosen snapshot), and explain.json's Grad-CAM / Grad-CAM++ / LRP
# localisation on the COVID-19 test images with lesion masks, with the network of the best validation accuracy.
# $ENSEMBLES lists the network ensembles as net1+net2[+...] (default Table II's four). A name <net>_balanced in
# $NETS trains <net> with balance_classes: true (Table I's balanced columns), e.g. NETS="resnet18 resnet18_balanced".
# Results (metrics.json, explanation_comparison.json, timings) go to docs/experiments/ensemble/<part>/; the table:
#   python scripts/experiments/ensemble_summary.py docs/experiments/ensemble/<part>
# Usage: bash scripts/experiments/ensemble_measure.sh synthetic|real
# RESUME=1 keeps the work folder and skips the networks already trained and evaluated there.
# Work folders go under ${ENSEMBLE_WORK:-/tmp/ensemble_measure}; the demo data cache is $MEDXAI_CACHE.
set -euo pipefail
cd "$(dirname "$0")/../.."
part=$1
repo=$(pwd)
work=${ENSEMBLE_WORK:-/tmp/ensemble_measure}/$part
results=$repo/docs/experiments/ensemble/$part
NETS=${NETS:-"vgg16 vgg19 resnet18 resnet34 densenet161 densenet201"}
[ -n "${RESUME:-}" ] || rm -rf "$work"
mkdir -p "$work" "$results"
C=$repo/bundles/covid19_cxr_ensemble_classification/configs
printf '{"date": "%s", "machine": "%s, %s CPU cores, no GPU", "commit": "%s", "part": "%s"}\n' \
  "$(date -u +%FT%TZ)" "$(uname -m)" "$(nproc)" "$(git rev-parse --short HEAD)" "$part" > "$results/run.json"
files() { local out="" f; for f in "$@"; do out+="'$f',"; done; echo "[${out%,}]"; }
if [ "$part" = demo ]; then
  cp -r "$repo/bundles/covid19_cxr_ensemble_classification" "$work/bundles_copy"
  start=$(date +%s)
  python - "$work/bundles_copy" > "$work/demo.log" 2>&1 <<'PY' || { tail -40 "$work/demo.log"; exit 1; }
import pathlib, shutil, sys, time
from medxai.cli import demo
root = pathlib.Path(sys.argv[1])
bundles = root.parent / "bundles"
bundles.mkdir(exist_ok=True)
shutil.move(str(root), bundles / "covid19_cxr_ensemble_classification")
for step in ("training", "evaluate", "explain"):
    start = time.time()
    demo(bundle="covid19_cxr_ensemble_classification", steps=step, bundles_dir=str(bundles))
    print(f"STEP {step} {time.time() - start:.0f}")
PY
  grep '^STEP' "$work/demo.log" | awk '{print "{\"step\": \"" $2 "\", \"wall_s\": " $3 "}"}' > "$results/timings.jsonl"
  B=$work/bundles/covid19_cxr_ensemble_classification
  cp "$B/eval/metrics.json" "$results/metrics.json"
  cp "$B/models/snapshot_selection.json" "$results/snapshot_selection.json"
  cp "$B/eval/explain/explanation_comparison.json" "$results/explanation_comparison.json"
  cp "$B/eval/explain/perturbation_curves.png" "$results/perturbation_curves.png"
  for mode in scpa pm; do  # the demo run's four snapshots as SCPA and PM ensembles
    python -m monai.bundle run --config_file "$(files "$B/configs/train.json" "$B/configs/evaluate.json" \
      "$B/configs/demo.json" "$B/configs/ensemble.json")" --bundle_root "$B" --output_dir "$work/eval_$mode" \
      --ensemble_mode "$mode" > "$work/eval_$mode.log" 2>&1 || { tail -40 "$work/eval_$mode.log"; exit 1; }
    mkdir -p "$results/snapshots_$mode" && cp "$work/eval_$mode/metrics.json" "$results/snapshots_$mode/metrics.json"
  done
  exit 0
fi
overlays=("$C/torchvision_cpu.json")
explain_extra=()
case $part in
  synthetic)
    python - "$C/demo.json" "$work/data.json" <<'PY'
import json, sys
json.dump({"demo_args": json.load(open(sys.argv[1]))["demo_args"]}, open(sys.argv[2], "w"))
PY
    overlays=("$work/data.json" "${overlays[@]}")
    data=()
    explain_extra=() ;;
  real)
    medxai datalist deepcovid_three_class "${ENSEMBLE_DATA:-../shared/data}" --output "$work/datalist.json" \
      --relative False > "$results/datalist_summary.txt"
    data=(--dataset_dir "$work/datalist.json" --use_lung_mask False)
    # explanations are scored on the test images that have lesion masks (ieee8023 COVID-19 with GB masks)
    python - "$work/datalist.json" "$work/lesion_datalist.json" <<'PY'
import json, sys
datalist = json.load(open(sys.argv[1]))
datalist["test"] = [r for r in datalist["test"] if "lesion_mask" in r]
json.dump(datalist, open(sys.argv[2], "w"))
print(len(datalist["test"]), "test images with lesion masks")
PY
    explain_extra=(--dataset_dir "$work/lesion_datalist.json" --use_lung_mask False) ;;
  *) echo "unknown part $part (synthetic, real)" >&2; exit 2 ;;
esac
timed() {  # name, command...: run, log, record the wall time
  local name=$1 start; shift; start=$(date +%s)
  "$@" > "$work/$name.log" 2>&1 || { tail -40 "$work/$name.log"; exit 1; }
  echo "{\"step\": \"$name\", \"wall_s\": $(( $(date +%s) - start ))}" >> "$results/timings.jsonl"
}
[ -n "${RESUME:-}" ] || rm -f "$results/timings.jsonl"
evaluate() {  # name, bundle root, extra configs and overrides...
  local name=$1 root=$2; shift 2
  local configs=("$C/train.json" "$C/evaluate.json" "${overlays[@]}")
  while [ $# -gt 0 ] && [[ $1 == *.json ]]; do configs+=("$1"); shift; done
  timed "evaluate_$name" python -m monai.bundle run --config_file "$(files "${configs[@]}")" --bundle_root "$root" \
    --output_dir "$work/eval_$name" "${data[@]}" "$@"
  mkdir -p "$results/$name" && cp "$work/eval_$name/metrics.json" "$results/$name/metrics.json"
  if [ "$part" = real ]; then  # the classes come from different sources: who predicted what, per source
    python scripts/experiments/cxrnet_by_source.py "$work/datalist.json" "$work/eval_$name/predictions.csv" \
      > "$results/$name/by_source.tsv"
  fi
}
for net in $NETS; do
  backbone=${net%_balanced} train_extra=()
  [ "$net" = "$backbone" ] || train_extra=(--balance_classes True)
  if [ -n "${RESUME:-}" ] && [ -f "$results/${net}_snapshots_pm/metrics.json" ]; then continue; fi
  timed "training_$net" python -m monai.bundle run training --config_file "$(files "$C/train.json" "${overlays[@]}")" \
    --bundle_root "$work/$net" --backbone "$backbone" "${data[@]}" "${train_extra[@]}"
  cp "$work/$net/models/snapshot_selection.json" "$results/snapshot_selection_$net.json"
  evaluate "$net" "$work/$net" --backbone "$backbone"
  for mode in scpa pm; do
    evaluate "${net}_snapshots_$mode" "$work/$net" "$C/ensemble.json" --backbone "$backbone" --ensemble_mode "$mode"
  done
done
ensemble() {  # name: networks joined by '+'; each network's chosen snapshot (models/model.pt)
  local name=$1 ckpts="" nets="" net
  for net in ${name//+/ }; do ckpts+="'$work/$net/models/model.pt',"; nets+="'${net%_balanced}',"; done
  for mode in scpa pm; do
    evaluate "${name}_$mode" "$work/${name%%+*}" "$C/ensemble.json" --ensemble_checkpoints "[${ckpts%,}]" \
      --ensemble_backbones "[${nets%,}]" --ensemble_mode "$mode"
  done
}
# Table II's combinations by default; a combination runs when all its networks were trained
ENSEMBLES=${ENSEMBLES:-"resnet18+densenet161 vgg19+densenet161 vgg19+resnet18 densenet161+vgg19+resnet18"}
for combo in $ENSEMBLES; do
  missing=0
  for net in ${combo//+/ }; do [[ " $NETS " == *" $net "* ]] || missing=1; done
  if [ $missing = 0 ]; then ensemble "$combo"; fi
done
best=$(python - "$results" $NETS <<'PY'
import json, sys
scores = {n: json.load(open(f"{sys.argv[1]}/snapshot_selection_{n}.json"))["chosen_score"] for n in sys.argv[2:]}
print(max(scores, key=lambda n: (scores[n], -sys.argv[2:].index(n))))
PY
)
echo "{\"explained_network\": \"$best\"}" > "$results/explained_network.json"
timed explain python -m monai.bundle run --config_file "$(files "$C/inference.json" "$C/explain.json" "${overlays[@]}")" \
  --bundle_root "$work/$best" --backbone "${best%_balanced}" --output_dir "$work/explain" "${explain_extra[@]}"
cp "$work/explain/explanation_comparison.json" "$results/explanation_comparison.json"
cp "$work/explain/perturbation_curves.png" "$results/perturbation_curves.png"
