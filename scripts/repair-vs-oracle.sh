#!/usr/bin/env bash
# How close does the repair come to the Oracle? `rlap experiment` (all rows: F-FT, Retrain,
# Relabel, Forward, Oracle) on Fashion-MNIST, MNIST (20,000-sample subsamples) and the UCI digits table,
# symmetric, pair and human-like noise, Initial trained 5 or 30 epochs (README, "Does the
# repair work"). The human-like matrices come from `make bench-quality`
# (out/quality/*-human.csv); rows that need one are skipped without it. JSON per run in
# out/repair/. About 8 min on 2 cores. Usage: scripts/repair-vs-oracle.sh [path/to/rlap]
set -euo pipefail
cd "$(dirname "$0")/.."
rlap="${1:-target/release/rlap}"
mkdir -p out/repair
run() { # name, then experiment arguments
  local name=$1; shift
  echo "== $name"
  "$rlap" experiment "$@" --seed 1 --quiet --json "out/repair/$name.json" |
    grep -E "^(Initial|F-FT|Retrain|Relabel|Forward|Oracle) "
}
digits="csv:data/digits/train.csv,data/digits/test.csv"
fm=(--dataset fashion-mnist --train-size 20000)
run fmnist-sym0.4-e5 "${fm[@]}" --corruption label-symmetric:0.4 --epochs 5
run fmnist-sym0.4-e30 "${fm[@]}" --corruption label-symmetric:0.4 --epochs 30
run fmnist-sym0.2-e30 "${fm[@]}" --corruption label-symmetric:0.2 --epochs 30
run fmnist-pair0.4-e30 "${fm[@]}" --corruption label-pair:0.4 --epochs 30
run mnist-sym0.4-e5 --dataset mnist --train-size 20000 --corruption label-symmetric:0.4 --epochs 5
run mnist-sym0.4-e30 --dataset mnist --train-size 20000 --corruption label-symmetric:0.4 --epochs 30
if [ -f out/quality/fashion-mnist-human.csv ]; then
  run fmnist-human0.4-e30 "${fm[@]}" --corruption label-matrix:out/quality/fashion-mnist-human.csv --epochs 30
fi
if [ -f data/digits/train.csv ]; then
  run digits-sym0.4-e30 --dataset "$digits" --corruption label-symmetric:0.4 --epochs 30
  if [ -f out/quality/digits-human.csv ]; then
    run digits-human0.4-e30 --dataset "$digits" --corruption label-matrix:out/quality/digits-human.csv --epochs 30
  fi
fi
