#!/usr/bin/env bash
# Rebuilds the reference bundle shipped in metaedge/reference/bundle, from scratch (issue 7's shipped model):
#   Conv4 ProtoNet, 128 channels, squared euclidean, 28x28, 60-way 1-shot 5-query episodes, 4000 episodes,
#   seed 0; classes augmented by the 8 symmetries of the square (rotations and mirror images), images by
#   random affine warps plus elastic distortion (0.05); trained on every alphabet of the two small Omniglot
#   background sets except Greek and Korean (held out for testing, never seen), with no validation alphabet
#   (the recipe was chosen on Japanese katakana: scripts/accuracy_experiments.sh), keeping the last checkpoint;
#   exported for x86-cpu with 3 test-time views in the graph, its parity check and open-set calibration.
# 70 minutes of training on two CPU cores (4206 s on the development VM); set DEVICE=cuda where a GPU is available.
#   usage: scripts/reference_bundle.sh [RUN_DIR]     env: DATA, DEVICE
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/omniglot}
RUN=${1:-runs/conv4w128-final}
DEVICE=${DEVICE:-cpu}
if [ ! -f "$RUN/best.safetensors" ]; then
  metaedge train --data "$DATA/images_background_small1.zip" --data "$DATA/images_background_small2.zip" \
    --out "$RUN" --algorithm protonet --backbone conv4 --width 128 --image-size 28 --way 60 --shot 1 --query 5 \
    --flips --elastic 0.05 --episodes 4000 --holdout-groups 2 --val-groups 0 --val-every 500 --seed 0 \
    --device "$DEVICE" --json | tee "$RUN.train.json"
fi
metaedge export "$RUN" --out metaedge/reference/bundle --target x86-cpu --views 3 --overwrite
metaedge evaluate metaedge/reference/bundle --way 20 --shot 1 --query 1 --episodes 1000 --within-group \
  --disjoint-drawers --seed 0 --json
