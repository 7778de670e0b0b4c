#!/usr/bin/env bash
# Does the paper's pruning help? One Initial and one partition per run, then fine-tuned after
# RLAP pruning, after random pruning of as many neurons, and without pruning (`none`), on
# Fashion-MNIST and MNIST (20,000-sample stratified subsamples, 40 % symmetric label noise)
# with Initial trained 5 and 30 epochs. Prints each sweep's summary (test accuracy per row).
# About 15 min on 2 cores. Usage: scripts/prune-ablation.sh [path/to/rlap]
set -euo pipefail
cd "$(dirname "$0")/.."
rlap="${1:-target/release/rlap}"
mkdir -p out/prune-ablation
for ds in fashion-mnist mnist; do
  for epochs in 5 30; do
    echo "== $ds, label-symmetric:0.4, Initial $epochs epochs"
    "$rlap" experiment --dataset "$ds" --corruption label-symmetric:0.4 --seed 1 \
      --train-size 20000 --epochs "$epochs" --sweep criteria:rlap,random,none --quiet \
      --json "out/prune-ablation/$ds-e$epochs.json" | sed -n '/^sweep summary/,$p'
  done
done
