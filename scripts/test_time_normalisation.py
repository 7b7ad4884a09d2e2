#!/usr/bin/env python
"""Does normalising embeddings at test time help a squared-euclidean ProtoNet? Zero-cost variants, one run.

    python scripts/test_time_normalisation.py RUN_DIR [--views N] [--episodes 1000]

Embeds the run's held-out test images once, then scores the same seeded within-alphabet, different-drawer
20-way 1-shot episodes with: the raw embeddings (what ships), L2-normalised ones (cosine), centred on the
mean embedding of the TRAINING images then L2-normalised (SimpleShot's CL2N; the mean never sees a test
image), and a square-root power transform then L2. Each query is still classified on its own.
"""

from __future__ import annotations

import argparse

import numpy as np

from metaedge import checkpoint as ckpt
from metaedge.data import open_dataset
from metaedge.evaluate import embed_all, evaluate_embeddings
from metaedge.methods.protonet import prototype_logits


def l2(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=1, keepdims=True).clip(min=1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--views", type=int, default=1)
    ap.add_argument("--episodes", type=int, default=1000)
    args = ap.parse_args()
    loaded = ckpt.load(args.run)
    if args.views > 1:
        loaded.set_views(args.views)
    dataset = open_dataset(loaded.meta["data"]["roots"])
    test = dataset.subset(loaded.meta["split"]["test"]).load(loaded.preprocess)
    train = dataset.subset(loaded.meta["split"]["train"]).load(loaded.preprocess)
    z, mean = embed_all(loaded.method, test), embed_all(loaded.method, train).mean(axis=0)
    variants = {"raw": z, "l2": l2(z), "centred on training mean + l2": l2(z - mean),
                "sqrt + l2": l2(np.sqrt(np.maximum(z, 0)))}  # fmt: skip
    protocol = dict(way=20, shot=1, query=1, episodes=args.episodes, within_group=True, disjoint_drawers=True, seed=0)
    classify = lambda s, sl, q, w: prototype_logits(s, sl, q, w, "sqeuclidean")  # noqa: E731
    for name, emb in variants.items():
        r = evaluate_embeddings(emb, classify, test, **protocol)
        print(f"{name:32s} {100 * r.accuracy:.2f}% ± {100 * r.ci95:.2f}")


if __name__ == "__main__":
    main()
