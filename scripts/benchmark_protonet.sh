#!/usr/bin/env bash
# Reproduces the ProtoNet rows of BENCHMARKS.md: a Conv4 ProtoNet meta-trained on CPU from the two small
# Omniglot background sets (alphabets held out by seed 0: Greek and Korean for testing, Japanese for
# validation), then evaluated on the held-out alphabets under five protocols, 1000 seeded episodes each.
#   usage: scripts/benchmark_protonet.sh [RUN_DIR]      env: DATA (omniglot folder), EPISODES, DEVICE
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/omniglot}
RUN=${1:-runs/protonet-conv4-cpu}
EPISODES=${EPISODES:-6000}
DEVICE=${DEVICE:-cpu}

mkdir -p "$(dirname "$RUN")"
if [ ! -f "$RUN/best.safetensors" ]; then
  metaedge train --data "$DATA/images_background_small1.zip" --data "$DATA/images_background_small2.zip" \
    --out "$RUN" --algorithm protonet --backbone conv4 --image-size 28 --way 60 --shot 1 --query 5 \
    --episodes "$EPISODES" --holdout-groups 2 --val-groups 1 --val-every 1000 --seed 0 --device "$DEVICE" --json \
    | tee "$RUN.train.json"
fi

evaluate() {  # way shot query extra-flags...
  local way=$1 shot=$2 query=$3
  shift 3
  metaedge evaluate "$RUN" --way "$way" --shot "$shot" --query "$query" --episodes 1000 --seed 0 \
    --device "$DEVICE" --json "$@"
}
{
  evaluate 5 1 15
  evaluate 5 5 15
  evaluate 20 1 5
  evaluate 20 5 5
  evaluate 20 1 1 --within-group --disjoint-drawers
} | tee "$RUN.eval.jsonl"
