#!/usr/bin/env bash
# Rebuilds metaedge/reference/ensemble from scratch: issue 7's shipped model until issue 17, now the teacher the
# shipped single network (scripts/reference_bundle.sh) is distilled from:
# an ensemble (`metaedge ensemble`) of five squared-euclidean ProtoNets (two Conv4, three ResNet-12), each
# classifying a query by the sum of their distances; queries through one view, support images through
# ENROLL_VIEWS test-time views (a second graph, run at enrollment only), both graphs int8 for ONNX Runtime's
# CPU provider. All members: 60-way 1-shot 5-query episodes, classes augmented by the 8 symmetries of the
# square (rotations and mirror images), images by random affine warps plus elastic distortion (0.05), trained
# on every alphabet of the two small Omniglot background sets except Greek and Korean (held out for testing,
# never seen: every run splits the alphabets as seed 0 does, --split-seed 0), no validation alphabet (recipes
# chosen on Japanese katakana: scripts/accuracy_experiments.sh), last checkpoint kept.
#   1. Conv4-128 at 28x28, seed 0, 4000 episodes (not a member itself: run 2 continues it) (70 min on the dev VM)
#   2. run 1 continued to 6000 episodes (--resume --episodes 6000: the cosine schedule stretches to the
#      new length, so the learning rate rises again, then decays)                          (+41 min)
#   3. Conv4-64 with a fifth block at 56x56, seed 0, 3000 episodes                          (71 min)
#   4. ResNet-12 of width 16 at 28x28, seed 0, 4000 episodes (--backbone resnet12 --width 16) (22 min)
#   5. the same, seed 52                                                                     (22 min alone)
#   6. the same, seed 59, half of the episodes within one alphabet (--within-group 0.5)      (22 min alone)
# About four and a half hours of training on two CPU cores; set DEVICE=cuda where a GPU is available. Then
# combined (members 2-6), exported for x86-cpu (int8 calibrated on training images, parity check, open-set
# calibration) and evaluated on the held-out alphabets. (Runs 5 and 6 were trained side by side with
# OMP_NUM_THREADS=1 each, 37-39 min; thread counts change float rounding, not the recipe.)
# int8 ranges from 512 training images, the default when it was made (now --calibration-size 512); open-set
# thresholds recalibrated on drawers 1-10 of the held-out alphabets, so tests/test_open_set.py checks them on
# drawers 11-20. The shipped enrollment graph was exported before the separable views (54ab01a) and rewritten to
# them afterwards by scripts/separable_views.py (its member runs are not kept); this script's export writes that
# form directly.
#   usage: scripts/reference_ensemble.sh [RUNS_DIR]     env: DATA, DEVICE, ENROLL_VIEWS (3)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/omniglot}
RUNS=${1:-runs}
DEVICE=${DEVICE:-cpu}
ENROLL_VIEWS=${ENROLL_VIEWS:-3}

train() {  # run flags...: a run's JSON is written when it ends; without one an interrupted run goes on from its
  # last checkpoint (one every 100 episodes; with no validation alphabet the interval changes nothing else)
  local run=$1 start=
  shift
  [ -s "$RUNS/$run.train.json" ] && return
  [ -f "$RUNS/$run/last.safetensors" ] && start=--resume
  metaedge train --data "$DATA/images_background_small1.zip" --data "$DATA/images_background_small2.zip" \
    --out "$RUNS/$run" $start --algorithm protonet --way 60 --shot 1 --query 5 --flips --elastic 0.05 \
    --holdout-groups 2 --val-groups 0 --val-every 100 --device "$DEVICE" --json "$@" | tee "$RUNS/$run.train.json.part"
  mv "$RUNS/$run.train.json.part" "$RUNS/$run.train.json"
}
train conv4w128-final --width 128 --image-size 28 --episodes 4000 --seed 0
if [ ! -s "$RUNS/conv4w128-6000.train.json" ]; then
  if [ ! -f "$RUNS/conv4w128-6000/last.safetensors" ]; then
    mkdir -p "$RUNS/conv4w128-6000"
    cp "$RUNS/conv4w128-final/"{best.safetensors,last.safetensors,log.jsonl} "$RUNS/conv4w128-6000/"
  fi
  metaedge train --data "$DATA/images_background_small1.zip" --data "$DATA/images_background_small2.zip" \
    --out "$RUNS/conv4w128-6000" --resume --episodes 6000 --device "$DEVICE" --json \
    | tee "$RUNS/conv4w128-6000.train.json.part"
  mv "$RUNS/conv4w128-6000.train.json.part" "$RUNS/conv4w128-6000.train.json"
fi
train w64d5-56-final --width 64 --depth 5 --image-size 56 --episodes 3000 --seed 0
train r12w16 --backbone resnet12 --width 16 --image-size 28 --episodes 4000 --seed 0
train r12w16-s52 --backbone resnet12 --width 16 --image-size 28 --episodes 4000 --seed 52 --split-seed 0
train r12w16-s59-wg --backbone resnet12 --width 16 --image-size 28 --episodes 4000 --seed 59 --split-seed 0 \
  --within-group 0.5

metaedge ensemble "$RUNS/w64d5-56-final" "$RUNS/conv4w128-6000" "$RUNS/r12w16" "$RUNS/r12w16-s52" \
  "$RUNS/r12w16-s59-wg" --out "$RUNS/ens5r12" --overwrite
metaedge export "$RUNS/ens5r12" --out metaedge/reference/ensemble --target x86-cpu --enroll-views "$ENROLL_VIEWS" \
  --int8 --calibration-size 512 --overwrite
metaedge calibrate metaedge/reference/ensemble --drawers 1-10
metaedge evaluate metaedge/reference/ensemble --way 20 --shot 1 --query 1 --episodes 1000 --within-group \
  --disjoint-drawers --seed 0 --json
