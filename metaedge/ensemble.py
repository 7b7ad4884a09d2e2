"""Combine trained runs into one ensemble checkpoint that evaluates, exports and runs like any other.

    combine(["runs/a", "runs/b"], "runs/a+b")  ->  runs/a+b/best.safetensors

The members must be ProtoNets with the squared euclidean metric (concatenated embeddings then add their
distances), read the same preprocessing apart from the image size (sizes must divide the largest), and hold
out the same test groups, so the ensemble's test groups are still unseen by every member. Each member's scale
is 1 / (RMS distance of its embeddings of the training images to their mean), measured on the members'
training groups, never on the test groups.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metaedge import checkpoint as ckpt
from metaedge.data import LoadedDataset, open_dataset
from metaedge.errors import CheckpointError
from metaedge.evaluate import embed_all

# Preprocessing that must agree between members; the size may differ (smaller members pool the input down).
_SHARED_PREPROCESS = ("channels", "invert", "mean", "std", "resample")


def combine(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `out`/best.safetensors holding every run's best checkpoint as one Ensemble backbone; returns it."""
    if len(runs) < 2:
        raise CheckpointError("an ensemble needs at least two runs")
    target = Path(out) / ckpt.BEST
    if target.exists() and not overwrite:
        raise CheckpointError(f"{out} already holds a checkpoint; pass --overwrite to replace it, or another --out")
    members = [ckpt.load(run) for run in runs]
    input_size = _check_compatible(members)
    first = members[0]
    # The members share their data (checked): open it once, decode each (groups, preprocessing) once.
    dataset = open_dataset(first.meta["data"]["roots"])
    decoded: dict[str, LoadedDataset] = {}
    specs = []
    for m in members:
        key = json.dumps([sorted(m.meta["split"]["train"]), m.preprocess.to_dict()], sort_keys=True)
        if key not in decoded:
            decoded[key] = dataset.subset(m.meta["split"]["train"]).load(m.preprocess)
        specs.append({
            "name": m.meta["backbone"]["name"], "kwargs": m.meta["backbone"]["kwargs"],
            "size": m.preprocess.size, "scale": 1.0 / _spread(m, decoded[key]),
        })  # fmt: skip
    split = {
        "train": sorted({g for m in members for g in m.meta["split"]["train"]}),
        "val": sorted({g for m in members for g in m.meta["split"].get("val", [])}),
        "test": sorted(first.meta["split"]["test"]),
    }
    meta = {
        "algorithm": {"name": "protonet", "config": {"metric": "sqeuclidean"}},
        "backbone": {
            "name": "ensemble",
            "kwargs": {"members": specs, "in_channels": first.preprocess.channels, "input_size": input_size},
        },
        "preprocess": {**first.preprocess.to_dict(), "size": input_size},
        "split": split,
        "data": first.meta["data"],
        "members": [
            {
                "checkpoint": str(m.path),
                "episode": m.meta.get("episode"),
                "seed": m.meta.get("seed"),
                "train_seconds": m.meta.get("train_seconds"),
                "train_config": m.meta.get("train_config"),
            }
            for m in members
        ],
        "episode": None,
        "seed": first.meta.get("seed"),
        "versions": ckpt.versions(),
    }
    method = ckpt.build_method(meta)
    for net, member in zip(method.backbone.members, members, strict=True):
        net.load_state_dict(member.method.backbone.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    ckpt.save(target, method, meta)
    return target


def _check_compatible(members: list[ckpt.Checkpoint]) -> int:
    """Raise CheckpointError naming the first member that cannot join; return the ensemble's input size."""
    first = members[0]
    for m in members:
        algorithm = m.meta["algorithm"]
        if algorithm["name"] != "protonet" or algorithm["config"].get("metric", "sqeuclidean") != "sqeuclidean":
            raise CheckpointError(f"{m.path}: only squared-euclidean ProtoNets can be combined, this is {algorithm}")
        if m.views != 1:
            raise CheckpointError(f"{m.path}: has {m.views} test-time views; combine plain runs, add views at export")
        a, b = first.preprocess.to_dict(), m.preprocess.to_dict()
        differ = [k for k in _SHARED_PREPROCESS if a.get(k) != b.get(k)]
        if differ:
            raise CheckpointError(f"{m.path}: preprocessing differs from {first.path} in {', '.join(differ)}")
        if set(m.meta["split"]["test"]) != set(first.meta["split"]["test"]):
            raise CheckpointError(
                f"{m.path}: holds out {sorted(m.meta['split']['test'])}, {first.path} holds out "
                f"{sorted(first.meta['split']['test'])}; members must share their test groups (train them with one "
                f"--split-seed)"
            )
        if _dataset_identity(m) != _dataset_identity(first):
            raise CheckpointError(f"{m.path}: trained on other data than {first.path}")
    largest = max(m.preprocess.size for m in members)
    for m in members:
        if largest % m.preprocess.size:
            raise CheckpointError(f"{m.path}: its size {m.preprocess.size} does not divide the largest, {largest}")
    return largest


def _dataset_identity(member: ckpt.Checkpoint) -> tuple:
    # Runs record their roots as given (relative or absolute), so compare names and the groups found in them.
    data = member.meta["data"]
    return tuple(Path(r).name for r in data["roots"]), tuple(data.get("all_groups", []))


def _spread(member: ckpt.Checkpoint, train_images: LoadedDataset) -> float:
    """RMS distance of the member's embeddings of its training images (no rotations) to their mean."""
    spread = embedding_spread(embed_all(member.method, train_images))
    if not spread > 0:
        raise CheckpointError(f"{member.path}: embeds every training image alike; cannot scale it")
    return spread


def embedding_spread(z: np.ndarray) -> float:
    """float (N, D) embeddings -> their RMS distance to their mean: a member's scale is its inverse."""
    return math.sqrt(float(np.mean(np.sum((z - z.mean(axis=0)) ** 2, axis=1))))
