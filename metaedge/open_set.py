"""Open-set calibration: the similarity below which the device answers "unknown", measured on held-out classes."""

from __future__ import annotations

import numpy as np

from metaedge import kernels
from metaedge.data import EpisodeSampler, LoadedDataset


def calibrate_threshold(
    embeddings: np.ndarray,
    data: LoadedDataset,
    metric: str,
    *,
    way: int = 5,
    shot: int = 5,
    query: int = 5,
    episodes: int = 300,
    accept_rate: float = 0.95,
    seed: int = 0,
    support_embeddings: np.ndarray | None = None,
) -> dict:
    """Threshold that accepts `accept_rate` of queries from enrolled classes, and how often it rejects strangers.

    embeddings: float32 (num_images, D) for the images of `data` (classes the model never trained on).
    Each episode enrolls `way` classes from `shot` images and holds one more class out as the stranger;
    a query's score is its best similarity to an enrolled prototype (scale 1: cosine similarity, or minus
    the squared distance), as the runtime computes it. support_embeddings: what enrollment computes for
    the same images, where a bundle embeds support images through a graph of its own.
    """
    support = embeddings if support_embeddings is None else support_embeddings
    way = min(way, data.num_classes - 1)
    sampler = EpisodeSampler(data.labels, data.class_groups, way + 1, shot, query, seed=seed)
    known, strangers = [], []
    for ep in sampler.episodes(episodes):
        enrolled = ep.support_labels < way
        protos = kernels.prototypes(support[ep.support[enrolled]], ep.support_labels[enrolled], way,
                                    normalize=metric == "cosine")  # fmt: skip
        scores = kernels.logits(embeddings[ep.query], protos, metric=metric, scale=1.0).max(axis=1)
        known.append(scores[ep.query_labels < way])
        strangers.append(scores[ep.query_labels == way])
    known, strangers = np.concatenate(known), np.concatenate(strangers)
    threshold = float(np.quantile(known, 1.0 - accept_rate))
    return {
        "threshold": threshold,
        "known_accept_rate": float((known >= threshold).mean()),
        "unknown_reject_rate": float((strangers < threshold).mean()),
        "protocol": f"{way}-way {shot}-shot enrolled, 1 unseen class as strangers, {episodes} episodes, "
        f"{query} queries per class, held-out classes",
    }
