#!/usr/bin/env bash
# Rebuilds the reference bundle shipped in metaedge/reference/bundle, from scratch:
#   Conv4 ProtoNet (squared euclidean), 28x28, 60-way 1-shot 5-query episodes, 6000 episodes, seed 0,
#   trained on the two small Omniglot background sets with the alphabets of seed 0 held out
#   (Greek and Korean for testing: never seen in training; Japanese (katakana) for checkpoint selection),
#   then exported for x86-cpu with its parity check and open-set calibration on Greek and Korean.
# About 30-40 minutes on two CPU cores; set DEVICE=cuda where a GPU is available.
#   usage: scripts/reference_bundle.sh [RUN_DIR]     env: DATA, DEVICE
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/protonet-conv4-cpu}
EPISODES=6000 scripts/benchmark_protonet.sh "$RUN"
metaedge export "$RUN" --out metaedge/reference/bundle --target x86-cpu --overwrite
