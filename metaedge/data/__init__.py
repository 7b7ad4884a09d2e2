"""Datasets, preprocessing, splits, augmentation and episodic sampling."""

from __future__ import annotations

import importlib

# Lazy (PEP 562): the device runtime reads preprocessing specs from here and must not pay for importing torch
# (about 3 s and 500 MB), which only augmentation and training need.
_EXPORTS = {
    "AffineAugment": "augment",
    "ClassInfo": "dataset",
    "ImageDataset": "dataset",
    "ImageRef": "dataset",
    "LoadedDataset": "dataset",
    "decode": "dataset",
    "open_dataset": "dataset",
    "PreprocessSpec": "preprocess",
    "Episode": "sampler",
    "EpisodeMix": "sampler",
    "EpisodeSampler": "sampler",
    "GroupSplit": "splits",
    "apply_split": "splits",
    "split_groups": "splits",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'metaedge.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"metaedge.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
