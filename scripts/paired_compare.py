#!/usr/bin/env python
"""Two bundles on the SAME seeded episodes: each one's accuracy, and their paired difference with a 95% CI.

    python scripts/paired_compare.py NEW_BUNDLE OLD_BUNDLE [--way 20 --shot 1 --query 1 --episodes 1000]
        [--within-group] [--disjoint-drawers] [--seed 0]

Two models evaluated on the same episodes are correlated, so the interval of their difference is much
narrower than either model's own: this is how a change of a few tenths of a point is told from noise.
Episodes are drawn exactly as `metaedge evaluate BUNDLE` draws them (same sampler, same seed offset), on
the first bundle's held-out groups; support images go through each bundle's enrollment graph where it has one.
"""

from __future__ import annotations

import argparse

import numpy as np

from metaedge import bundle as bundle_io
from metaedge.evaluate import _held_out, bundle_embeddings, eval_sampler, mean_ci95
from metaedge.methods.protonet import prototype_logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs=2)
    ap.add_argument("--way", type=int, default=20)
    ap.add_argument("--shot", type=int, default=1)
    ap.add_argument("--query", type=int, default=1)
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--within-group", action="store_true")
    ap.add_argument("--disjoint-drawers", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    bundles = [bundle_io.load(b) for b in args.bundles]
    specs = {(b.preprocess.channels, b.preprocess.size) for b in bundles}
    training = bundles[0].manifest.get("training") or {}
    dataset = _held_out(training, str(bundles[0].path), None, None)
    # Same classes and images in the same order either way; decoded once where both take the same input.
    if len(specs) > 1:
        data = [dataset.load(b.preprocess) for b in bundles]
    else:
        data = [dataset.load(bundles[0].preprocess)] * 2
    sampler = eval_sampler(data[0], args.way, args.shot, args.query, within_group=args.within_group,
                           disjoint_drawers=args.disjoint_drawers, seed=args.seed)  # fmt: skip
    per_model = []
    for b, d in zip(bundles, data):
        queries, support = bundle_embeddings(b, d.pixels)
        support = queries if support is None else support
        accs, groups = [], []
        for ep in sampler.episodes(args.episodes):
            groups.append(d.class_groups[d.labels[ep.query[0]]])  # one group per episode with --within-group
            logits = prototype_logits(support[ep.support], ep.support_labels, queries[ep.query], args.way, b.metric,
                                      b.scale)  # fmt: skip
            accs.append(float((logits.argmax(axis=1) == ep.query_labels).mean()))
        per_model.append(np.asarray(accs))
        mean, ci = mean_ci95(accs)
        print(f"{b.model_id}: {100 * mean:.2f}% ± {100 * ci:.2f}")
    diff, ci = mean_ci95(per_model[0] - per_model[1])
    print(f"paired difference (first - second), {args.episodes} episodes: {100 * diff:+.2f} points ± {100 * ci:.2f}")
    if args.within_group:  # where a difference comes from: each episode is one alphabet's
        groups = np.asarray(groups)
        for group in sorted(set(groups)):
            rows = groups == group
            diff, ci = mean_ci95(per_model[0][rows] - per_model[1][rows])
            print(f"  {group}, {rows.sum()} episodes: {100 * per_model[0][rows].mean():.2f}% vs "
                  f"{100 * per_model[1][rows].mean():.2f}%, {100 * diff:+.2f} points ± {100 * ci:.2f}")


if __name__ == "__main__":
    main()
