#!/usr/bin/env bash
# Measured figures of bundles/covid19_cxrnet_classification/docs/README.md, each through the bundle's own configs:
#   demo       train.json + demo.json (segmented input), then evaluate.json and explain.json (maps as returned,
#              then restricted to the lungs); COVID-19 cases only (seed 001 Fig. 13) and every diseased case
#   original   the same with original_input.json (seed 001 Fig. 10: original vs lung-segmented input)
#   real       train.json + real_four_class_cpu.json on the staged ieee8023 + Kermany images (cxrnet_four_class
#              datalist), lungs from a trained cxr_lung_segmentation bundle (real_ieee8023_cpu.json)
# Copies metrics.json / explanation_comparison.json and the wall times into docs/experiments/cxrnet/<part>/.
# Usage: bash scripts/experiments/cxrnet_measure.sh demo|original|real [lung_segmentation_bundle_dir]
# Work folders go under ${CXRNET_WORK:-/tmp/cxrnet_measure}; the demo data cache is $MEDXAI_CACHE.
set -euo pipefail
cd "$(dirname "$0")/../.."
part=$1
repo=$(pwd)
work=${CXRNET_WORK:-/tmp/cxrnet_measure}/$part
results=$repo/docs/experiments/cxrnet/$part
rm -rf "$work" && mkdir -p "$work" "$results"
cp -r bundles/covid19_cxrnet_classification "$work/bundle"
B=$work/bundle
C=$B/configs
extra=()
case $part in
  demo) overlays=("$C/demo.json") ;;
  original) overlays=("$C/demo.json" "$C/original_input.json") ;;
  real)
    lungs=${2:?give the trained cxr_lung_segmentation bundle folder}
    medxai datalist cxrnet_four_class "${CXRNET_DATA:-../shared/data}" --output "$work/datalist.json" \
      --relative False > "$results/datalist_summary.txt"
    overlays=("$C/real_four_class_cpu.json")
    extra=(--dataset_dir "$work/datalist.json" --lung_segmentation_bundle "$lungs") ;;
  *) echo "unknown part $part (demo, original, real)" >&2; exit 2 ;;
esac
files() { local out="" f; for f in "$@"; do out+="'$f',"; done; echo "[${out%,}]"; }
timed() {  # name, command...: run, log, record the wall time
  local name=$1 start; shift; start=$(date +%s)
  "$@" > "$work/$name.log" 2>&1 || { tail -40 "$work/$name.log"; exit 1; }
  echo "{\"step\": \"$name\", \"wall_s\": $(( $(date +%s) - start ))}" >> "$results/timings.jsonl"
}
rm -f "$results/timings.jsonl"
timed training python -m monai.bundle run training --config_file "$(files "$C/train.json" "${overlays[@]}")" \
  --bundle_root "$B" "${extra[@]}"
timed evaluate python -m monai.bundle run --config_file "$(files "$C/train.json" "$C/evaluate.json" "${overlays[@]}")" \
  --bundle_root "$B" "${extra[@]}"
cp "$B/eval/metrics.json" "$results/metrics.json"
if [ "$part" = real ]; then
  python scripts/experiments/cxrnet_by_source.py "$work/datalist.json" "$B/eval/predictions.csv" > "$results/by_source.tsv"
fi
explain() {  # name, extra overrides...
  local name=$1; shift
  timed "explain_$name" python -m monai.bundle run \
    --config_file "$(files "$C/inference.json" "$C/explain.json" "${overlays[@]}")" --bundle_root "$B" \
    --output_dir "$work/explain_$name" "${extra[@]}" "$@"
  cp "$work/explain_$name/explanation_comparison.json" "$results/explanation_$name.json"
  cp "$work/explain_$name/perturbation_curves.png" "$results/perturbation_curves_$name.png"
}
explain covid19
explain covid19_in_lungs --explain_region_key lung_mask
if [ "$part" != real ]; then
  echo '{"explain_target_class": null}' > "$work/all_classes.json"
  overlays+=("$work/all_classes.json")
  explain all_classes
fi
echo "{\"date\": \"$(date -u +%Y-%m-%dT%H:%MZ)\", \"machine\": \"$(uname -m), $(nproc) CPU cores, no GPU\"}" > "$results/run.json"
echo "results in $results"
