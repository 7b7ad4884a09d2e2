#!/usr/bin/env bash
# Reproduces the experiment rows of BENCHMARKS.md "Accuracy: toward human-level one-shot (issue 7)": short
# runs that compare training recipes on the VALIDATION alphabet (Japanese katakana; within-alphabet 20-way
# 1-shot, different drawers, 300 episodes, logged in RUN/log.jsonl), all with Greek and Korean held out
# (seed 0), then the Pareto table of every candidate on the held-out alphabets through the exported bundle.
#   usage: scripts/accuracy_experiments.sh [OUT_DIR]      env: DATA, EPISODES (1500), DEVICE (cpu)
# Each 1500-episode Conv4-64 run takes about 20 minutes on two CPU cores, Conv4-128 and Conv4-64 at 56 px
# (5 blocks) about three times that.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/omniglot}
OUT=${1:-runs/accuracy}
EPISODES=${EPISODES:-1500}
DEVICE=${DEVICE:-cpu}
mkdir -p "$OUT"

run() {  # name flags...
  local name=$1
  shift
  [ -f "$OUT/$name/best.safetensors" ] && return
  metaedge train --data "$DATA/images_background_small1.zip" --data "$DATA/images_background_small2.zip" \
    --out "$OUT/$name" --way 60 --shot 1 --query 5 --episodes "$EPISODES" --holdout-groups 2 --val-groups 1 \
    --val-way 20 --val-within-group --val-every 500 --seed 0 --device "$DEVICE" --json "$@" >"$OUT/$name.json"
}
STROKES=(--strokes "$DATA/strokes_background_small1.zip" --strokes "$DATA/strokes_background_small2.zip")
run w64-flip-elastic --flips --elastic 0.05
run w64-flip-elastic-strokes3 --flips --elastic 0.05 "${STROKES[@]}" --stroke-variants 3
run w128-flip-elastic --width 128 --flips --elastic 0.05
run w64-d5-56-flip-elastic --depth 5 --image-size 56 --flips --elastic 0.05
# Half, then all, of the training episodes drawn within one alphabet (validated every 250 episodes).
run w64-flip-elastic-wg0.5 --flips --elastic 0.05 --within-group 0.5 --val-every 250
run w64-flip-elastic-wg1.0 --flips --elastic 0.05 --within-group 1.0 --val-every 250

python scripts/accuracy_pareto.py \
  --candidate "w64 6000 (issue 2 reference)=runs/protonet-conv4-cpu" \
  --candidate "w64 6000 (issue 2 reference)=runs/protonet-conv4-cpu@9" \
  --candidate "w64 flip+elastic=$OUT/w64-flip-elastic" \
  --candidate "w64 flip+elastic+strokes=$OUT/w64-flip-elastic-strokes3" \
  --candidate "w128 flip+elastic=$OUT/w128-flip-elastic" \
  --candidate "w128=runs/conv4w128-final" \
  --candidate "w128=runs/conv4w128-final@3" \
  --candidate "w128=runs/conv4w128-final@5" \
  --candidate "w128=runs/conv4w128-final@9" \
  --json "$OUT/pareto.json" --markdown "$OUT/pareto.md"

# Ensembles of the full-length runs that scripts/reference_bundle.sh trains (run it first), with the
# previous shipped model (w128, 3 views) measured again beside them.
metaedge ensemble runs/conv4w128-final runs/w64d5-56-final --out "$OUT/ens2" --overwrite
metaedge ensemble runs/conv4w128-final runs/w64d5-56-final runs/conv4w128-6000 --out "$OUT/ens3" --overwrite
python scripts/accuracy_pareto.py \
  --candidate "w128=runs/conv4w128-final@3" \
  --candidate "w64 x5 @56=runs/w64d5-56-final" \
  --candidate "ensemble of 2=$OUT/ens2" \
  --candidate "ensemble of 2=$OUT/ens2@2" \
  --candidate "ensemble of 3=$OUT/ens3" \
  --json "$OUT/pareto-ensembles.json" --markdown "$OUT/pareto-ensembles.md"

# Independent members instead of snapshots: a second Conv4-128 initialised from seed 31 (which splits the
# alphabets exactly as seed 0 does: Greek and Korean held out), 2000 episodes (29 minutes on two CPU cores).
if [ ! -f runs/conv4w128-seed31-2000/last.safetensors ]; then
  metaedge train --data "$DATA/images_background_small1.zip" --data "$DATA/images_background_small2.zip" \
    --out runs/conv4w128-seed31-2000 --width 128 --way 60 --shot 1 --query 5 --flips --elastic 0.05 \
    --episodes 2000 --holdout-groups 2 --val-groups 0 --val-every 500 --seed 31 --device "$DEVICE" --json
fi
metaedge ensemble runs/conv4w128-final runs/w64d5-56-final runs/conv4w128-seed31-2000 --out "$OUT/ens3-indep" --overwrite
metaedge ensemble runs/conv4w128-final runs/w64d5-56-final runs/conv4w128-6000 runs/conv4w128-seed31-2000 \
  --out "$OUT/ens4-indep" --overwrite
python scripts/accuracy_pareto.py \
  --candidate "ensemble of 3 (shipped)=$OUT/ens3" \
  --candidate "ensemble of 3, independent=$OUT/ens3-indep" \
  --candidate "ensemble of 4=$OUT/ens4-indep" \
  --json "$OUT/pareto-independent.json" --markdown "$OUT/pareto-independent.md"

# Second session: support-side views (--enroll-views), int8 graphs (--int8), and a fifth member trained by
# scripts/reference_bundle.sh (seed 31, half the episodes within one alphabet).
metaedge ensemble runs/conv4w128-final runs/w64d5-56-final runs/conv4w128-6000 runs/conv4w128-seed31-2000 \
  runs/w128-s31-wg --out "$OUT/ens5" --overwrite
metaedge ensemble runs/conv4w128-final runs/w64d5-56-final runs/conv4w128-seed31-2000 runs/w128-s31-wg \
  --out "$OUT/ens4b" --overwrite
python scripts/accuracy_pareto.py \
  --candidate "w128 seed 31, half within-alphabet=runs/w128-s31-wg" \
  --candidate "ensemble of 3 (shipped until now)=$OUT/ens3" \
  --candidate "ensemble of 3=$OUT/ens3@1,e9" \
  --candidate "ensemble of 3=$OUT/ens3@1,e9,int8" \
  --candidate "ensemble of 4=$OUT/ens4-indep@1,e9,int8" \
  --candidate "ensemble of 4, new member=$OUT/ens4b@1,e9,int8" \
  --candidate "ensemble of 5=$OUT/ens5@1,e9,int8" \
  --candidate "ensemble of 5=$OUT/ens5@1,e9" \
  --json "$OUT/pareto-enroll-int8.json" --markdown "$OUT/pareto-enroll-int8.md"
for views in 2 3 5; do
  metaedge evaluate "$OUT/ens5" --enroll-views "$views" --way 20 --shot 1 --query 1 --episodes 1000 \
    --within-group --disjoint-drawers --seed 0 --json
done

# Third session: classifier pre-training (Meta-Baseline, --pretrain-epochs) and a sixth independent member,
# both Conv4-128 with the shipped members' recipe and seed 48 (same alphabet split as seed 0). Every
# candidate is then evaluated twice: on the seed-0 episodes used to choose models so far, and on 2000 fresh
# seed-1 episodes that no choice has looked at.
full() {  # name flags...
  local name=$1
  shift
  [ -f "runs/$name/last.safetensors" ] && return
  metaedge train --data "$DATA/images_background_small1.zip" --data "$DATA/images_background_small2.zip" \
    --out "runs/$name" --width 128 --way 60 --shot 1 --query 5 --flips --elastic 0.05 --holdout-groups 2 \
    --val-groups 0 --val-every 500 --seed 48 --device "$DEVICE" --json "$@" | tee "runs/$name.train.json"
}
full w128-s48-pre15 --episodes 2000 --pretrain-epochs 15   # 45 min: 17.5 of pre-training, 27.5 of episodes
full w128-s48 --episodes 3000                              # 52 min
metaedge ensemble runs/conv4w128-final runs/w64d5-56-final runs/conv4w128-seed31-2000 runs/w128-s31-wg \
  runs/w128-s48-pre15 --out "$OUT/ens5q" --overwrite
metaedge ensemble runs/conv4w128-final runs/w64d5-56-final runs/w128-s31-wg runs/w128-s48-pre15 \
  --out "$OUT/ens4q" --overwrite
metaedge ensemble runs/conv4w128-final runs/w64d5-56-final runs/conv4w128-seed31-2000 runs/w128-s31-wg \
  runs/w128-s48-pre15 runs/w128-s48 --out "$OUT/ens6" --overwrite
for run in runs/w128-s48-pre15 runs/w128-s48 runs/conv4w128-seed31-2000 "$OUT/ens5" "$OUT/ens5q" "$OUT/ens4q" \
  "$OUT/ens6"; do
  metaedge evaluate "$run" --enroll-views 3 --way 20 --shot 1 --query 1 --episodes 1000 --within-group \
    --disjoint-drawers --seed 0 --json
  metaedge evaluate "$run" --enroll-views 3 --way 20 --shot 1 --query 1 --episodes 2000 --within-group \
    --disjoint-drawers --seed 1 --json
done
metaedge export "$OUT/ens5q" --out "$OUT/bundle-ens5q" --target x86-cpu --enroll-views 3 --int8 --overwrite
python scripts/paired_compare.py "$OUT/bundle-ens5q" metaedge/reference/bundle --within-group --disjoint-drawers
python scripts/paired_compare.py "$OUT/bundle-ens5q" metaedge/reference/bundle --within-group --disjoint-drawers \
  --seed 1 --episodes 2000

# Third session, last: ResNet-12 (runs/r12w16 is trained by scripts/reference_bundle.sh, 22 min), its cost
# against Conv4-128, alone on seeds 0 and 1, and in the ensemble that now ships, against the one before it.
python scripts/bench_backbones.py
for seed_episodes in "0 1000" "1 2000"; do
  set -- $seed_episodes
  metaedge evaluate runs/r12w16 --way 20 --shot 1 --query 1 --within-group --disjoint-drawers --seed "$1" \
    --episodes "$2" --json
  metaedge evaluate runs/r12w16 --enroll-views 3 --way 20 --shot 1 --query 1 --within-group --disjoint-drawers \
    --seed "$1" --episodes "$2" --json
done
metaedge ensemble runs/conv4w128-final runs/w64d5-56-final runs/conv4w128-6000 runs/conv4w128-seed31-2000 \
  runs/w128-s31-wg runs/r12w16 --out "$OUT/ens6r" --overwrite
metaedge evaluate "$OUT/ens6r" --enroll-views 3 --way 20 --shot 1 --query 1 --within-group --disjoint-drawers \
  --seed 1 --episodes 2000 --json
metaedge export "$OUT/ens6r" --out "$OUT/bundle-ens6r" --target x86-cpu --enroll-views 3 --int8 --overwrite
for seed in 1 2; do  # OLD: the five-member bundle of commit 0577722 (git show 0577722:metaedge/reference/bundle/...)
  python scripts/paired_compare.py "$OUT/bundle-ens6r" "${OLD:?set OLD to the five-member bundle}" \
    --within-group --disjoint-drawers --seed "$seed" --episodes 2000
done

# Fourth session: more ResNet-12 members (runs/r12w16-s52 and runs/r12w16-s59-wg are trained by
# scripts/reference_bundle.sh; seed 74 here), all nine members combined once, every subset of them scored on
# 2000 seed-1 episodes (scripts/ensemble_search.py: the choice), then the chosen one, exported, against the
# bundle shipped before on the seed-0, seed-2 and seed-3 episodes that no choice looked at.
# OLD: the six-member bundle of commit 6152412 (git show 6152412:metaedge/reference/bundle/...).
metaedge train --data "$DATA/images_background_small1.zip" --data "$DATA/images_background_small2.zip" \
  --out runs/r12w16-s74 --algorithm protonet --way 60 --shot 1 --query 5 --flips --elastic 0.05 --holdout-groups 2 \
  --val-groups 0 --val-every 500 --backbone resnet12 --width 16 --image-size 28 --episodes 4000 --seed 74 \
  --split-seed 0 --device "$DEVICE" --json | tee runs/r12w16-s74.train.json  # 22 min alone (30.5 here, shared)
metaedge ensemble runs/conv4w128-final runs/w64d5-56-final runs/conv4w128-6000 runs/conv4w128-seed31-2000 \
  runs/w128-s31-wg runs/r12w16 runs/r12w16-s52 runs/r12w16-s59-wg runs/r12w16-s74 --out "$OUT/ens-all9" --overwrite
python scripts/ensemble_search.py "$OUT/ens-all9" --reference 1,2,5,6,7 --min-members 1 --enroll-views 3 \
  --within-group --disjoint-drawers --seed 1 --episodes 2000 --top 600
for seed_episodes in "0 1000" "2 2000" "3 2000"; do
  set -- $seed_episodes
  python scripts/paired_compare.py metaedge/reference/bundle "${OLD:?set OLD to the six-member bundle}" \
    --within-group --disjoint-drawers --seed "$1" --episodes "$2"
done
# After the choice: a fifth ResNet-12 (seed 76, half within one alphabet), and the search over all ten members.
metaedge train --data "$DATA/images_background_small1.zip" --data "$DATA/images_background_small2.zip" \
  --out runs/r12w16-s76-wg --algorithm protonet --way 60 --shot 1 --query 5 --flips --elastic 0.05 \
  --holdout-groups 2 --val-groups 0 --val-every 500 --backbone resnet12 --width 16 --image-size 28 --episodes 4000 \
  --seed 76 --split-seed 0 --within-group 0.5 --device "$DEVICE" --json | tee runs/r12w16-s76-wg.train.json
metaedge ensemble runs/conv4w128-final runs/w64d5-56-final runs/conv4w128-6000 runs/conv4w128-seed31-2000 \
  runs/w128-s31-wg runs/r12w16 runs/r12w16-s52 runs/r12w16-s59-wg runs/r12w16-s74 runs/r12w16-s76-wg \
  --out "$OUT/ens-all10" --overwrite
python scripts/ensemble_search.py "$OUT/ens-all10" --reference 1,2,5,6,7 --min-members 1 --enroll-views 3 \
  --within-group --disjoint-drawers --seed 1 --episodes 2000 --top 1100
