"""Issue 17: does a teacher help? Paired comparison of the easyfsl study's plain-distance one-pass Conv4 trained
with the shipped ensemble as a kl teacher against the same network and seeds without it: held-out Greek and
Korean, 1000 identical 20-way 1-shot 5-query episodes, across alphabets and within one (other drawers).

    usage: python scripts/distill_compare.py OUT "SEEDS"
OUT holds plain-p1-s{SEED} (from scripts/easyfsl_differences.sh OUT) and plain-p1-kl-s{SEED}, trained as
easyfsl_differences.sh trains plain-p1-s{SEED} plus the teacher:
    OMP_NUM_THREADS=1 metaedge train --data $DATA/images_background_small1.zip \
      --data $DATA/images_background_small2.zip --out OUT/plain-p1-kl-sSEED --algorithm protonet --backbone conv4 \
      --width 64 --image-size 28 --way 60 --shot 1 --query 5 --episodes 600 --lr 1e-3 --no-rotations --no-augment \
      --holdout-groups 2 --val-groups 1 --val-every 600 --seed SEED --split-seed 0 --loss-distance plain \
      --embed-passes 1 --device cpu --teacher metaedge/reference/ensemble --distill kl
"""

import sys
from pathlib import Path

import numpy as np

from metaedge import checkpoint as ckpt
from metaedge.evaluate import _held_out, embed_all, eval_sampler, mean_ci95

out, seeds, n = sys.argv[1], sys.argv[2].split(), 1000
protocols = {"across alphabets": dict(within_group=False, disjoint_drawers=False),
             "within alphabet, other drawers": dict(within_group=True, disjoint_drawers=True)}
acc = {}
for name in ("plain-p1", "plain-p1-kl"):
    for s in seeds:
        loaded = ckpt.load(Path(f"{out}/{name}-s{s}"), which=ckpt.LAST)
        data = _held_out(loaded.meta, out, None, None).load(loaded.preprocess)
        emb = embed_all(loaded.method, data)
        for p, kw in protocols.items():
            sampler = eval_sampler(data, 20, 1, 5, seed=0, **kw)
            acc[p, name, s] = np.array([(loaded.method.classify_embeddings(emb[e.support], e.support_labels,
                                        emb[e.query], 20).argmax(1) == e.query_labels).mean()
                                        for e in sampler.episodes(n)])
for p in protocols:
    for s in seeds:
        d, c = mean_ci95(acc[p, "plain-p1-kl", s] - acc[p, "plain-p1", s])
        print(f"{p}, seed {s}: without {100 * acc[p, 'plain-p1', s].mean():.1f}, with teacher "
              f"{100 * acc[p, 'plain-p1-kl', s].mean():.1f}, paired {100 * d:+.2f} +- {100 * c:.2f}")
    d, c = mean_ci95(np.mean([acc[p, "plain-p1-kl", s] - acc[p, "plain-p1", s] for s in seeds], axis=0))
    print(f"{p}, mean over seeds: paired {100 * d:+.2f} +- {100 * c:.2f}")
