"""Episodic sampling: N-way K-shot Q-query tasks, optionally within one group and with disjoint drawers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from metaedge.errors import DataError


@dataclass(frozen=True)
class Episode:
    """Indices into a LoadedDataset for one task.

    support: int64 (way * shot,), class-major: the images of episode class 0 first.
    query: int64 (way * query,), class-major.
    support_labels / query_labels: int64 of the same shapes, episode class indices in [0, way).
    classes: int64 (way,), dataset class index of each episode class.
    """

    support: np.ndarray
    query: np.ndarray
    support_labels: np.ndarray
    query_labels: np.ndarray
    classes: np.ndarray


class EpisodeSampler:
    """Draws episodes from per-image class labels (and drawers).

    Episode `i` depends only on (seed, i), not on what was drawn before, so a resumed run or an
    evaluation of episodes 500-999 sees exactly the episodes a full run would.

    within_group: every class of an episode comes from the same group (the Omniglot within-alphabet protocol).
    disjoint_drawers: support and query images of a class are by different drawers. The drawers are
    ranked once per episode and every class takes its support from its first-ranked drawers, so on
    Omniglot the whole support set is by one drawer and the queries by others, as in Lake et al. (2015).
    """

    def __init__(
        self,
        labels: np.ndarray,
        class_groups: list[str],
        way: int,
        shot: int,
        query: int,
        *,
        drawers: np.ndarray | None = None,
        within_group: bool = False,
        disjoint_drawers: bool = False,
        seed: int = 0,
    ) -> None:
        if way < 1 or shot < 1 or query < 0:
            raise DataError(f"need way >= 1, shot >= 1 and query >= 0, got way={way} shot={shot} query={query}")
        self.way, self.shot, self.query, self.seed = way, shot, query, seed
        self.within_group, self.disjoint_drawers = within_group, disjoint_drawers
        labels = np.asarray(labels, dtype=np.int64)
        self.drawers = None if drawers is None else np.asarray(drawers, dtype=np.int64)
        self.class_images = [np.flatnonzero(labels == c) for c in range(len(class_groups))]
        if disjoint_drawers:
            if self.drawers is None or (self.drawers < 0).any():
                raise DataError("disjoint_drawers needs the drawer of every image (file names ending in _<drawer>)")
            usable = [c for c in range(len(class_groups)) if self._drawer_ok(c)]
        else:
            usable = [c for c, imgs in enumerate(self.class_images) if len(imgs) >= shot + query]
        if within_group:
            by_group: dict[str, list[int]] = {}
            for c in usable:
                by_group.setdefault(class_groups[c], []).append(c)
            self.pools = [np.asarray(v) for _, v in sorted(by_group.items()) if len(v) >= way]
            self.pool_names = [g for g, v in sorted(by_group.items()) if len(v) >= way]
            if not self.pools:
                sizes = {g: len(v) for g, v in sorted(by_group.items())}
                raise DataError(f"no group has {way} classes with {shot + query} usable images each: {sizes}")
        else:
            self.pools = [np.asarray(usable)]
            self.pool_names = ["*"]
            if len(usable) < way:
                raise DataError(
                    f"{way}-way episodes need {way} classes with {shot + query} usable images; found {len(usable)}"
                )

    def _drawer_ok(self, c: int) -> bool:
        d = self.drawers[self.class_images[c]]
        return len(np.unique(d)) > self.shot and len(d) >= self.shot + self.query

    def episode(self, index: int) -> Episode:
        rng = np.random.default_rng([self.seed, index])
        pool = self.pools[rng.integers(len(self.pools))]
        classes = rng.choice(pool, size=self.way, replace=False)
        rank = None
        if self.disjoint_drawers:
            all_drawers = np.unique(self.drawers[np.concatenate([self.class_images[c] for c in classes])])
            rank = {int(d): r for r, d in enumerate(rng.permutation(all_drawers))}
        support, query = [], []
        for c in classes:
            s, q = self._pick(self.class_images[c], rng, rank)
            support.append(s)
            query.append(q)
        return Episode(
            support=np.concatenate(support),
            query=np.concatenate(query) if self.query else np.zeros(0, dtype=np.int64),
            support_labels=np.repeat(np.arange(self.way), self.shot),
            query_labels=np.repeat(np.arange(self.way), self.query),
            classes=np.asarray(classes, dtype=np.int64),
        )

    def _pick(self, images: np.ndarray, rng: np.random.Generator, rank: dict | None) -> tuple[np.ndarray, np.ndarray]:
        images = rng.permutation(images)
        if rank is None:
            return images[: self.shot], images[self.shot : self.shot + self.query]
        # Stable sort by the episode's drawer ranking: first-ranked drawers give the support set.
        images = images[np.argsort([rank[int(d)] for d in self.drawers[images]], kind="stable")]
        support, support_drawers = [], set()
        for i in images:
            d = int(self.drawers[i])
            if d not in support_drawers:
                support.append(i)
                support_drawers.add(d)
                if len(support) == self.shot:
                    break
        rest = [i for i in images if int(self.drawers[i]) not in support_drawers]
        if len(rest) < self.query:
            raise DataError(f"a class has only {len(rest)} images by drawers other than its support drawers")
        return np.asarray(support, dtype=np.int64), np.asarray(rest[: self.query], dtype=np.int64)

    def episodes(self, count: int, start: int = 0) -> Iterator[Episode]:
        for i in range(start, start + count):
            yield self.episode(i)


class EpisodeMix:
    """Draws each episode from one of two samplers: `within` with probability `fraction`, else `across`.

    Training for a within-group test (Omniglot's within-alphabet protocol) on within-group episodes only
    shows the learner its hardest negatives, the look-alike characters of one alphabet; a mix keeps the
    across-group episodes too. The choice for episode `i` depends only on (seed, i), as the episodes do.
    """

    def __init__(self, across: EpisodeSampler, within: EpisodeSampler, fraction: float, seed: int = 0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise DataError(f"the fraction of within-group episodes must be in [0, 1], got {fraction}")
        self.across, self.within, self.fraction, self.seed = across, within, fraction, seed

    def is_within(self, index: int) -> bool:
        # A stream of its own (the trailing 1) so the choice does not shift the episodes' draws.
        return bool(np.random.default_rng([self.seed, index, 1]).random() < self.fraction)

    def episode(self, index: int) -> Episode:
        return (self.within if self.is_within(index) else self.across).episode(index)
