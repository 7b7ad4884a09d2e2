"""Backbone weights from a local file (`--init-weights`): safetensors, or a PyTorch state dict read with
`torch.load(weights_only=True)`; never a download, never a pickle that could run code."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from metaedge.errors import MetaedgeError

# Prefixes a state dict's keys often carry from the module that held the network when it was saved
# (DataParallel's "module.", a wrapper's "model."/"backbone.", as in a metaedge checkpoint, ExternalBackbone's
# "network.").
_PREFIXES = ("module.", "model.", "backbone.", "network.", "state_dict.")
# Where checkpoints written by training scripts keep the state dict itself.
_NESTED = ("state_dict", "model", "model_state_dict", "state_dict_ema")
_SHOWN = 3  # keys named in a message


class WeightsError(MetaedgeError):
    """An --init-weights file that cannot be read safely, or that holds weights for another architecture."""


@dataclass
class WeightsReport:
    """What loading a weights file did: every tensor of the network either `loaded` or `missing` (kept random);
    `unexpected`: the file's keys the network has no place for (a removed classifier's, typically)."""

    file: str
    sha256: str
    format: str
    loaded: int
    missing: list[str]
    unexpected: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:_SHOWN]) + (f", ... ({len(keys)})" if len(keys) > _SHOWN else "") if keys else "none"

        return (f"{self.loaded} tensors loaded from {Path(self.file).name} ({self.format}); missing (kept random): "
                f"{some(self.missing)}; unexpected (ignored): {some(self.unexpected)}")  # fmt: skip


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a weights file by name, and its format ("safetensors" or "torch"), or WeightsError saying
    why the file is refused. torch files are read by torch's safe loader only: tensors and plain containers."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    with open(path, "rb") as f:
        head = f.read(16)
    if _looks_like_safetensors(head, path.stat().st_size):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), "safetensors"
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    if not head.startswith(b"PK\x03\x04") and not head.startswith(b"\x80"):
        raise WeightsError(f"{path}: refused: neither safetensors nor a torch.save file (starts {head[:8]!r})")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as e:
        raise WeightsError(f"{path}: refused: torch.load(weights_only=True) will not read it, so it holds more than "
                           f"tensors (a pickled object): {_reason(e)}") from None  # fmt: skip
    return _tensors(obj, path), "torch"


def _reason(error: Exception) -> str:
    """The line of torch's long refusal that says what was found (its first line offers to load it unsafely)."""
    found = re.search(r"Unsupported[^\n]*?(?= was not|\. |\n|$)", str(error))
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return found.group(0) if found else (lines[0] if lines else type(error).__name__)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header starting with '{'."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _tensors(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in _NESTED:  # a training script's checkpoint: {"state_dict": {...}, "epoch": 3, ...}
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{path}: refused: not a state dict (names to tensors) but a {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: refused: not a state dict; {len(bad)} entries are not tensors (first: {bad[0]!r})")
    return obj


def _strip_prefixes(tensors: dict[str, torch.Tensor], own: set[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Keep the keys under a prefix, without it, while that makes more keys match the network's own.

    Returns those tensors and the file's keys left out on the way (a metaedge checkpoint's optimizer state and
    learned scale beside its `backbone.` tensors; nothing for a file whose every key shares the prefix).
    """
    left_out: list[str] = []
    names = {k: k for k in tensors}  # key now -> the file's own name for it
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            stripped = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if len(own & set(stripped)) > len(own & set(tensors)):
                left_out += [names[k] for k in tensors if not k.startswith(prefix)]
                names = {k[len(prefix) :]: names[k] for k in tensors if k.startswith(prefix)}
                tensors, changed = stripped, True
    return tensors, left_out


def load_init_weights(backbone: nn.Module, path: str | os.PathLike) -> WeightsReport:
    """Load a weights file into `backbone` (a library network's own keys for timm/torchvision backbones).

    Refused, with nothing changed: a tensor whose shape differs from the network's (the first few named, with
    both shapes), or a file that fills at most half of the network: weights for another architecture.
    """
    from metaedge.models.external import ExternalBackbone

    target = backbone.network if isinstance(backbone, ExternalBackbone) else backbone
    tensors, fmt = read_state_dict(path)
    own = target.state_dict()
    tensors, left_out = _strip_prefixes(tensors, set(own))
    shared = [k for k in own if k in tensors]
    mismatched = [k for k in shared if tuple(tensors[k].shape) != tuple(own[k].shape)]
    what = type(target).__name__
    if mismatched:
        shown = "; ".join(f"{k}: file {list(tensors[k].shape)}, model {list(own[k].shape)}"
                          for k in mismatched[:_SHOWN])  # fmt: skip
        raise WeightsError(f"{path}: weights for another architecture than this {what}: {len(mismatched)} of "
                           f"{len(shared)} shared tensors differ in shape ({shown})")  # fmt: skip
    if 2 * len(shared) <= len(own):
        extra = [k for k in tensors if k not in own][:_SHOWN]
        raise WeightsError(f"{path}: weights for another architecture than this {what}: they fill {len(shared)} of "
                           f"its {len(own)} tensors (file keys such as {extra}, model keys such as "
                           f"{[k for k in own if k not in tensors][:_SHOWN]})")  # fmt: skip
    target.load_state_dict({k: tensors[k].to(own[k].dtype) for k in shared}, strict=False)
    return WeightsReport(
        file=str(path), sha256=hashlib.sha256(Path(path).read_bytes()).hexdigest(), format=fmt, loaded=len(shared),
        missing=[k for k in own if k not in tensors], unexpected=[k for k in tensors if k not in own] + left_out,
    )  # fmt: skip
