"""Checkpoints: weights in safetensors, everything else as JSON in the safetensors header. No pickle anywhere."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import metaedge
from metaedge.data.preprocess import PreprocessSpec
from metaedge.errors import CheckpointError
from metaedge.methods import FewShotMethod, create_method
from metaedge.models import create_backbone

FORMAT = "metaedge-checkpoint"
SCHEMA_VERSION = 1
BEST, LAST = "best.safetensors", "last.safetensors"
_OPTIM = "optimizer."  # key prefix of optimizer tensors inside last.safetensors


@dataclass
class Checkpoint:
    """A loaded checkpoint: the method (backbone inside) and its metadata (the JSON stored with the weights)."""

    method: FewShotMethod
    meta: dict
    path: Path

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.meta["preprocess"])

    @property
    def views(self) -> int:
        return int(self.meta.get("views", 1))

    def set_views(self, count: int) -> None:
        """Embed through `count` test-time views (models/views.py) from now on; export records the count."""
        try:
            self.method.set_views(count, self.preprocess.size)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        self.meta = {**self.meta, "views": count}

    @property
    def enroll_views(self) -> int:
        """Views of support (enrollment) images: the query views unless set apart."""
        return int(self.meta.get("enroll_views", self.views))

    @property
    def enrolls_apart(self) -> bool:
        """Support images are embedded differently from queries: an export gets an enrollment graph."""
        return self.enroll_views != self.views

    def set_enroll_views(self, count: int) -> None:
        """Embed support images through `count` views (queries keep theirs); export adds an enrollment graph."""
        if not self.method.embeds_independently:
            raise CheckpointError(f"{self.path}: enrollment views need a method that embeds each image on its own "
                                  f"(ProtoNet, ANIL, Meta-SGD), not {self.meta['algorithm']['name']}")  # fmt: skip
        try:
            self.method.set_enroll_views(count, self.preprocess.size)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        self.meta = {**self.meta, "enroll_views": count}


def versions() -> dict:
    return {"metaedge": metaedge.__version__, "torch": torch.__version__, "python": platform.python_version()}


def build_method(meta: dict) -> FewShotMethod:
    """A fresh, untrained method of the architecture `meta` describes."""
    backbone = create_backbone(meta["backbone"]["name"], **meta["backbone"]["kwargs"])
    return create_method(meta["algorithm"]["name"], backbone, **meta["algorithm"]["config"])


def save(
    path: str | os.PathLike, method: FewShotMethod, meta: dict, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint in place, never a torn file."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in method.state_dict().items()}
    meta = {**meta, "format": FORMAT, "schema_version": SCHEMA_VERSION}
    if optimizer is not None:
        state = optimizer.state_dict()
        for index, slots in state["state"].items():
            for slot, value in slots.items():
                tensors[f"{_OPTIM}{index}.{slot}"] = torch.as_tensor(value).detach().contiguous().cpu()
        meta["optimizer_param_groups"] = state["param_groups"]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"metaedge": json.dumps(meta)})
    os.replace(tmp, path)


def resolve(path: str | os.PathLike, which: str = BEST) -> Path:
    """A run directory means its `which` checkpoint; a file means itself."""
    path = Path(path)
    if path.is_dir():
        path = path / which
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    return path


def read_meta(path: Path) -> dict:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if "metaedge" not in header:
        raise CheckpointError(f"{path}: a safetensors file, but not a metaedge checkpoint (no 'metaedge' metadata)")
    try:
        meta = json.loads(header["metaedge"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    if meta.get("schema_version", 0) > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint schema {meta['schema_version']} is newer than this metaedge understands "
            f"({SCHEMA_VERSION}); upgrade metaedge"
        )
    return meta


def load(path: str | os.PathLike, which: str = BEST, map_location: str = "cpu") -> Checkpoint:
    """Load a checkpoint file or a run directory's `which` checkpoint into a ready, eval-mode method."""
    path = resolve(path, which)
    meta = read_meta(path)
    try:
        tensors = load_file(str(path), device=map_location)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: weights cannot be read ({e})") from None
    method = build_method(meta)
    weights = {k: v for k, v in tensors.items() if not k.startswith(_OPTIM)}
    try:
        method.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the architecture in its metadata: {e}") from None
    loaded = Checkpoint(method=method, meta=meta, path=path)
    if loaded.views > 1:
        loaded.set_views(loaded.views)
    if "enroll_views" in loaded.meta:
        loaded.set_enroll_views(loaded.enroll_views)
    method.to(map_location).eval()
    return loaded


def load_optimizer_state(path: Path, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    """Restore the optimizer state saved by `save(..., optimizer=...)`, for an exact resume."""
    tensors = load_file(str(path))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith(_OPTIM):
            index, slot = key[len(_OPTIM) :].split(".", 1)
            state.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
