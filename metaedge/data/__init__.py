"""Datasets, preprocessing, splits, augmentation and episodic sampling."""

from metaedge.data.augment import AffineAugment
from metaedge.data.dataset import ClassInfo, ImageDataset, ImageRef, LoadedDataset, decode, open_dataset
from metaedge.data.preprocess import PreprocessSpec
from metaedge.data.sampler import Episode, EpisodeMix, EpisodeSampler
from metaedge.data.splits import GroupSplit, apply_split, split_groups

__all__ = [
    "AffineAugment",
    "ClassInfo",
    "Episode",
    "EpisodeMix",
    "EpisodeSampler",
    "GroupSplit",
    "ImageDataset",
    "ImageRef",
    "LoadedDataset",
    "PreprocessSpec",
    "apply_split",
    "decode",
    "open_dataset",
    "split_groups",
]
