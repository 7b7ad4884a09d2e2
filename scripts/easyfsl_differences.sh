#!/usr/bin/env bash
# Issue 17: which of easyfsl's two visible differences makes its Conv4 more accurate after 600 episodes?
# A 2x2 study: the training loss on the squared (metaedge) or plain (easyfsl) euclidean distance
# (--loss-distance), support and query embedded in one forward pass (metaedge) or two, each with its own
# batch-norm statistics (easyfsl) (--embed-passes). Everything else as in the issue's side-by-side: Conv4-64 at
# 28 px, five training alphabets (Greek and Korean held out for testing, Japanese katakana for validation:
# --split-seed 0), 60-way 1-shot 5-query episodes, Adam 1e-3 with the cosine schedule, no rotations, no
# augmentation, 600 episodes. Each training seed (initial weights and episodes) is shared by the four
# variants, so every comparison is paired twice: by seed, and by evaluation episode (the held-out alphabets,
# 20-way 1-shot 5-query, the same seeded episodes for every network, both across alphabets and within one
# alphabet with support and queries by different drawers).
#   usage: scripts/easyfsl_differences.sh [OUT_DIR]
#   env: DATA, SEEDS ("1 2 3"), EPISODES (600), EVAL_EPISODES (1000), THREADS (1 per run), JOBS (2 runs at once),
#        TRAIN (1; 0: only the table, from the runs already in OUT_DIR)
# 12 runs of 600 episodes, about 6 CPU-minutes each at one thread (issue 17's first session, on the 2-core dev
# VM shared under a load of about 10: 52 minutes' wall time per run, two at once).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/omniglot}
OUT=${1:-runs/easyfsl-differences}
SEEDS=${SEEDS:-1 2 3}
EPISODES=${EPISODES:-600}
EVAL_EPISODES=${EVAL_EPISODES:-1000}
THREADS=${THREADS:-1}
JOBS=${JOBS:-2}
TRAIN=${TRAIN:-1}
mkdir -p "$OUT"
export DATA OUT EPISODES THREADS

VARIANTS=("squared 1" "plain 1" "squared 2" "plain 2")
train_one() {  # distance passes seed
  local name="$1-p$2-s$3"
  [ -f "$OUT/$name/last.safetensors" ] && return
  OMP_NUM_THREADS=$THREADS metaedge train --data "$DATA/images_background_small1.zip" \
    --data "$DATA/images_background_small2.zip" --out "$OUT/$name" --overwrite --algorithm protonet \
    --backbone conv4 --width 64 --image-size 28 --way 60 --shot 1 --query 5 --episodes "$EPISODES" --lr 1e-3 \
    --no-rotations --no-augment --holdout-groups 2 --val-groups 1 --val-every "$EPISODES" --seed "$3" \
    --split-seed 0 --loss-distance "$1" --embed-passes "$2" --device cpu --json >"$OUT/$name.train.json"
}
export -f train_one
if [ "$TRAIN" != 0 ]; then
  for seed in $SEEDS; do for v in "${VARIANTS[@]}"; do echo "$v $seed"; done; done |
    xargs -P "$JOBS" -L 1 bash -c 'train_one "$@"' _
fi

# Paired comparison on the held-out alphabets, every network on the same seeded episodes (as
# scripts/paired_compare.py pairs two bundles; here the runs' checkpoints, fp32, through PyTorch). A run that is
# missing (stopped early) is left out and named; each difference uses the seeds both of its sides have.
OMP_NUM_THREADS=$THREADS SEEDS="$SEEDS" EVAL_EPISODES="$EVAL_EPISODES" python - <<'EOF' | tee "$OUT/table.md"
import math
import os
from pathlib import Path

import numpy as np

from metaedge import checkpoint as ckpt
from metaedge.evaluate import _held_out, embed_all, eval_sampler, mean_ci95

out, seeds, n = os.environ["OUT"], os.environ["SEEDS"].split(), int(os.environ["EVAL_EPISODES"])
variants = [("squared", 1), ("plain", 1), ("squared", 2), ("plain", 2)]
protocols = {"20-way 1-shot, across alphabets": dict(within_group=False, disjoint_drawers=False),
             "20-way 1-shot, within alphabet, other drawers": dict(within_group=True, disjoint_drawers=True)}
acc, missing, groups = {}, [], set()  # acc: (protocol, variant, seed) -> per-episode accuracies (n,)
for v in variants:
    for s in seeds:
        run = Path(f"{out}/{v[0]}-p{v[1]}-s{s}")
        if not (run / ckpt.LAST).is_file():
            missing.append(run.name)
            continue
        loaded = ckpt.load(run, which=ckpt.LAST)
        data = _held_out(loaded.meta, out, None, None).load(loaded.preprocess)
        groups |= set(data.class_groups)
        emb = embed_all(loaded.method, data)
        for name, kw in protocols.items():
            sampler = eval_sampler(data, 20, 1, 5, seed=0, **kw)
            acc[name, v, s] = np.array([
                (loaded.method.classify_embeddings(emb[e.support], e.support_labels, emb[e.query], 20).argmax(1)
                 == e.query_labels).mean() for e in sampler.episodes(n)])

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # Student t


def seed_ci(values):  # mean and the 95% t-interval half-width over training seeds
    values = np.asarray(values)
    if len(values) < 2:
        return f"{values.mean():+.2f} (1 seed)"
    half = T975.get(len(values) - 1, 1.96) * values.std(ddof=1) / math.sqrt(len(values))
    return f"{values.mean():+.2f} ± {half:.2f}"


def paired(name, pairs):
    """pairs: [(variant, baseline)]; over the seeds where all were trained -> (episode-paired, seed-level, seeds)."""
    both = [s for s in seeds if all((name, v, s) in acc and (name, b, s) in acc for v, b in pairs)]
    if not both:
        return None
    per_seed = [[acc[name, v, s] - acc[name, b, s] for v, b in pairs] for s in both]
    d, c = mean_ci95(np.mean([x for row in per_seed for x in row], axis=0))
    return (f"{100 * d:+.2f} ± {100 * c:.2f}", seed_ci([100 * np.mean([x.mean() for x in row]) for row in per_seed]),
            len(both))


print(f"Held out: {', '.join(sorted(groups))}; {n} evaluation episodes (seed 0, 5 queries per class); "
      f"training seeds {', '.join(seeds)}" + (f"; not trained: {', '.join(missing)}" if missing else "") + "\n")
base = ("squared", 1)
for name in protocols:
    print(f"### {name}\n")
    print("| loss distance | passes | accuracy per seed (%) | vs squared, 1 pass: episode-paired ± CI | ± seed CI |")
    print("| --- | --- | --- | --- | --- |")
    for v in variants:
        per_seed = " / ".join(f"{100 * acc[name, v, s].mean():.1f}" if (name, v, s) in acc else "-" for s in seeds)
        cmp = paired(name, [(v, base)]) if v != base else None
        print(f"| {v[0]} | {v[1]} | {per_seed} | {cmp[0] if cmp else '-'} | {cmp[1] if cmp else '-'} |")
    # Main effects of the 2x2: each factor's change averaged over the other factor's two levels.
    for label, pairs in (("plain - squared distance", [(("plain", p), ("squared", p)) for p in (1, 2)]),
                         ("2 passes - 1 pass", [((d, 2), (d, 1)) for d in ("squared", "plain")])):
        cmp = paired(name, pairs)
        if cmp:
            print(f"\nmain effect, {label}: {cmp[0]} points (episode-paired), {cmp[1]} (over {cmp[2]} training seeds)")
    print()
EOF
