#!/usr/bin/env bash
# Many cycles on one long stream (issue "cycles that make the model better", item 3): the
# demo (the daemon on librdkafka's mock cluster) streams a training split with a steady 20 %
# symmetric label noise for several passes at a fixed rate, with a trigger (noisy fraction
# 0.15, 5 s cool-down) that keeps cycles coming, once with `cycle.regrow = true` (default:
# the parent's pruned neurons are regrown before pruning anew) and once with pruning
# accumulating (`false`), on Fashion-MNIST and MNIST (20,000-sample subsamples). Prints per
# run: cycles by outcome, the pruned share of fc in the served version, and the test accuracy
# of the first version, after the first accepted cycle and at the end.
# The daemon keeps its last 20 cycle records: "cycles" says ">= 20" when more ran; accepted
# cycles are counted from the published versions. SUMMARY_ONLY=1 re-prints the table.
# About 15 min on 2 cores. Usage: scripts/many-cycles.sh [path/to/rlap] [samples] [rate]
set -euo pipefail
cd "$(dirname "$0")/.."
rlap="${1:-target/release/rlap}"
samples="${2:-160000}"
rate="${3:-1000}"
out=out/many-cycles
mkdir -p "$out"
for ds in fashion-mnist mnist; do
  for regrow in true false; do
    [ -n "${SUMMARY_ONLY:-}" ] && continue
    tag="$ds-regrow-$regrow"
    echo "== $tag: label-symmetric:0.2, $samples samples at $rate/s" >&2
    RLAP__TRIGGER__NOISY_FRACTION=0.15 RLAP__TRIGGER__COOLDOWN_SECS=5 \
    RLAP__CYCLE__EPOCHS=2 RLAP__REPLAY__CAPACITY=10000 RLAP__CYCLE__REGROW=$regrow \
      "$rlap" demo --dataset "$ds" --corruption label-symmetric:0.2 --seed 1 \
      --train-size 20000 --limit "$samples" --rate "$rate" --malformed-every 0 --quiet \
      --out "$out/demo-$tag" --json "$out/$tag.json" > "$out/$tag.log" 2>&1
  done
done
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
print("| run | cycles | accepted (versions published) | rejected / skipped / failed (last 20) | pruned share of fc (served) | test acc. v1 | v2 (1st accepted) | at the end |")
print("|---|---|---|---|---|---|---|---|")
for name in sorted(f for f in os.listdir(out) if f.endswith(".json")):
    d = json.load(open(os.path.join(out, name)))
    cyc = d["daemon"]["cycles"]
    n = {k: sum(c["outcome"] == k for c in cyc) for k in ("rejected", "skipped", "failed")}
    acc = d["version_accuracy"]
    served = acc[-1][0]
    meta = json.load(open(os.path.join(out, "demo-" + name[:-5], "models", "mnist", str(served), "metadata.json")))
    share = len(meta["pruned_neurons"]) / meta["hidden"]
    count = f">= {len(cyc)}" if len(cyc) >= 20 else str(len(cyc))
    v2 = f"{acc[1][1]:.4f}" if len(acc) > 1 else "—"
    print(f"| {name[:-5]} | {count} | {len(acc) - 1} | {n['rejected']} / {n['skipped']} / {n['failed']} | "
          f"{share:.3f} | {acc[0][1]:.4f} | {v2} | {acc[-1][1]:.4f} |")
PY
