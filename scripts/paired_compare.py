#!/usr/bin/env python
"""Two models on the SAME seeded episodes: each one's accuracy, and their paired difference with a 95% CI.

    python scripts/paired_compare.py NEW OLD [--way 20 --shot 1 --query 1 --episodes 1000]
        [--within-group] [--disjoint-drawers] [--seed 0]

Two models evaluated on the same episodes are correlated, so the interval of their difference is much
narrower than either model's own: this is how a change of a few tenths of a point is told from noise.
Episodes are drawn exactly as `metaedge evaluate BUNDLE` draws them (same sampler, same seed offset), on
the first bundle's held-out groups; support images go through each bundle's enrollment graph where it has one.

A model is a bundle, or a question about bundles that would take a training run or an export to settle:
  BUNDLE@N          support images through the bundle's query graph on the first N test-time views
                    (metaedge/models/views.py), their embeddings averaged: what `metaedge export --enroll-views N`
                    puts in an enrollment graph (the warps stay float there too); queries as the bundle runs them.
  BUNDLE+BUNDLE...  the bundles' embeddings side by side, each multiplied by 1 / (RMS distance of its embeddings
                    of its own training images to their mean), as metaedge/ensemble.py weighs an ensemble's members;
                    squared euclidean distances then add. Every part may carry its own @N.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from metaedge import bundle as bundle_io
from metaedge.data import open_dataset
from metaedge.ensemble import embedding_spread
from metaedge.evaluate import _held_out, bundle_embeddings, eval_sampler, mean_ci95
from metaedge.methods.protonet import prototype_logits


def split_parts(spec: str) -> list[str]:
    """'A@5+B' -> ['A@5', 'B']. A '+' inside a bundle's own name (distill_ensemble.sh writes bundle-kl+relational)
    is no separator: each part is the longest run of '+'-joined pieces that names an existing path."""
    def names_a_bundle(part: str) -> bool:
        path, _, views = part.partition("@")
        return Path(path).exists() and (views == "" or views.isdigit())

    pieces, parts, i = spec.split("+"), [], 0
    while i < len(pieces):
        j = next((j for j in range(len(pieces), i, -1) if names_a_bundle("+".join(pieces[i:j]))), i + 1)
        parts.append("+".join(pieces[i:j]))
        i = j
    return parts


def parse_model(spec: str) -> list[tuple[bundle_io.Bundle, int | None]]:
    """'A@5+B' -> [(bundle A, 5), (bundle B, None)]: None keeps the bundle's own enrollment graph."""
    parts = []
    for part in split_parts(spec):
        path, _, views = part.partition("@")
        parts.append((bundle_io.load(path), int(views) if views else None))
    if len(parts) > 1:
        for b, _ in parts:
            if b.metric != "sqeuclidean":
                raise SystemExit(f"{b.path}: only squared-euclidean bundles add their distances side by side")
    return parts


def viewed_support(session, x: np.ndarray, views: int) -> np.ndarray:
    """float32 (N, C, S, S) network inputs -> (N, D): the mean embedding of the first `views` views through a
    bundle's query-graph `session`."""
    import torch

    from metaedge.models.views import TestTimeViews
    from metaedge.ort import run_batched

    warped = TestTimeViews(views, x.shape[-1]).warp(torch.from_numpy(x)).numpy()  # (V*N, C, S, S), view-major
    return run_batched(session, np.ascontiguousarray(warped)).reshape(views, len(x), -1).mean(axis=0)


# Training images by (roots, groups, preprocessing): bundles side by side usually share them; decode them once.
_TRAINING: dict[tuple, np.ndarray] = {}


def spread(b: bundle_io.Bundle, session) -> float:
    """RMS distance of the bundle's query embeddings of its training images to their mean (never held-out ones)."""
    from metaedge.ort import run_batched

    training = b.manifest["training"]
    roots, groups = list(training["data"]["roots"]), training["split"]["train"]
    key = (tuple(roots), tuple(sorted(groups)), b.preprocess)  # a PreprocessSpec is hashable
    if key not in _TRAINING:
        _TRAINING[key] = open_dataset(roots).subset(groups).load(b.preprocess).pixels
    return embedding_spread(run_batched(session, b.preprocess.normalize(_TRAINING[key])))


def model_embeddings(parts, load) -> tuple[np.ndarray, np.ndarray]:
    """The held-out images (`load(preprocess)` -> LoadedDataset) through a model -> (queries, support), float32
    (N, D)."""
    from metaedge.ort import create_session, run_batched

    queries, support = [], []
    for b, views in parts:
        pixels = load(b.preprocess).pixels
        session = create_session(b.onnx_path) if views is not None or len(parts) > 1 else None
        if views is None:
            q, s = bundle_embeddings(b, pixels)
            s = q if s is None else s
        else:  # the enrollment graph's output would be thrown away: run the query graph alone
            x = b.preprocess.normalize(pixels)
            q, s = run_batched(session, x), viewed_support(session, x, views)
        scale = 1.0 / spread(b, session) if len(parts) > 1 else 1.0
        queries.append(q * scale)
        support.append(s * scale)
    return np.concatenate(queries, axis=1), np.concatenate(support, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs=2, metavar="MODEL")
    ap.add_argument("--way", type=int, default=20)
    ap.add_argument("--shot", type=int, default=1)
    ap.add_argument("--query", type=int, default=1)
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--within-group", action="store_true")
    ap.add_argument("--disjoint-drawers", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    models = [parse_model(spec) for spec in args.models]
    first = models[0][0][0]
    dataset = _held_out(first.manifest.get("training") or {}, str(first.path), None, None)
    # Same classes and images in the same order for every model: the episodes index both alike. Each input size
    # is decoded once.
    loaded = {}

    def load(preprocess):
        if preprocess not in loaded:
            loaded[preprocess] = dataset.load(preprocess)
        return loaded[preprocess]

    data = load(first.preprocess)
    sampler = eval_sampler(data, args.way, args.shot, args.query, within_group=args.within_group,
                           disjoint_drawers=args.disjoint_drawers, seed=args.seed)  # fmt: skip
    per_model = []
    for spec, parts in zip(args.models, models):
        queries, support = model_embeddings(parts, load)
        metric, scale = (parts[0][0].metric, parts[0][0].scale) if len(parts) == 1 else ("sqeuclidean", 1.0)
        accs, groups = [], []
        for ep in sampler.episodes(args.episodes):
            groups.append(data.class_groups[data.labels[ep.query[0]]])  # one group per episode with --within-group
            logits = prototype_logits(support[ep.support], ep.support_labels, queries[ep.query], args.way, metric,
                                      scale)  # fmt: skip
            accs.append(float((logits.argmax(axis=1) == ep.query_labels).mean()))
        per_model.append(np.asarray(accs))
        mean, ci = mean_ci95(accs)
        name = parts[0][0].model_id if spec == str(parts[0][0].path) else spec
        print(f"{name}: {100 * mean:.2f}% ± {100 * ci:.2f}")
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
