"""Seeded splits by group, so that no class of a held-out alphabet is ever seen in training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metaedge.data.dataset import ImageDataset
from metaedge.errors import DataError


@dataclass(frozen=True)
class GroupSplit:
    """Disjoint group names: train on `train`, pick checkpoints on `val`, report accuracy on `test`."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def split_groups(groups: list[str], holdout: int, val: int = 0, seed: int = 0) -> GroupSplit:
    """Shuffle `groups` with `seed`; the first `holdout` are the test groups, the next `val` the validation groups."""
    groups = sorted(groups)
    if holdout < 0 or val < 0:
        raise DataError("the numbers of held-out and validation groups cannot be negative")
    if holdout + val >= len(groups):
        raise DataError(
            f"cannot hold out {holdout} + {val} of {len(groups)} groups and still have one to train on: {groups}"
        )
    order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    return GroupSplit(
        train=tuple(sorted(order[holdout + val :])),
        val=tuple(sorted(order[holdout : holdout + val])),
        test=tuple(sorted(order[:holdout])),
    )


def apply_split(dataset: ImageDataset, split: GroupSplit) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """The train, validation and test parts of `dataset` (validation or test may be empty)."""
    return tuple(dataset.subset(names) for names in (split.train, split.val, split.test))  # type: ignore[return-value]
