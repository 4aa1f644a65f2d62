#!/usr/bin/env bash
# Seed 003 Table 2 on synthetic CT: the MIL method (EDM + SIM + NCM) against the slice-level and COVNet
# baselines, trained on centre A's patients and tested on every centre-B patient (COVID-19 against normal
# and lobar pneumonia; 40 % of COVID-19 and pneumonia cases mild). Two training seeds per method.
# Appends one JSON line per trial to docs/experiments/ct_mil_cross_centre.jsonl.
# Usage: bash scripts/experiments/ct_mil_cross_centre.sh [seed ...]   (about 7 min per trial on one core)
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=("${@:-0 1}")
common=(--num-cases 160 --shape 128,128,32 --cross-centre "A>B" --backbone small_resnet --size 96
        --section-length 8 --k 4 --dropout 0.2 --epochs 40 --val-every 10 --threads 1
        --results docs/experiments/ct_mil_cross_centre.jsonl)
for seed in ${seeds[*]}; do
  python scripts/experiments/ct_mil_demo_search.py "${common[@]}" --seeds "$seed" --name mil_sim_ncm
  python scripts/experiments/ct_mil_demo_search.py "${common[@]}" --seeds "$seed" --name slice_level \
    --pooling mean_slices --loss slice --use-ncm false --lambda-noisy 0
  python scripts/experiments/ct_mil_demo_search.py "${common[@]}" --seeds "$seed" --name covnet \
    --pooling max_features --use-ncm false --lambda-noisy 0
done
