"""Backbones from timm and torchvision by name (`timm:mobilenetv3_small_100`, `torchvision:resnet18`), never pretrained.

The library's network is built with random weights (timm `pretrained=False`, torchvision `weights=None`: nothing
is ever downloaded; pretrained weights come from a local file through `--init-weights`, metaedge/weights.py),
its classifier removed, and its globally pooled features are the embedding. The embedding size is measured
from the network itself by one probe forward pass, so any classification network of either library works.
"""

from __future__ import annotations

import difflib
import importlib

import torch
from torch import nn

from metaedge.errors import MetaedgeError
from metaedge.models._registry import register_family

# A probe image this large passes every stride-32 network down to at least 2x2 before its global pooling.
_PROBE_SIDE = 64


class ExternalBackbone(nn.Module):
    """A timm or torchvision network without its classifier.

    Input (B, in_channels, H, W) -> embedding (B, embedding_dim): the network's globally average-pooled features
    (a network whose head was removed down to a feature map is pooled here). `network` is the library's own
    module, whose state dict keys are the library's (what `--init-weights` files hold).
    """

    def __init__(self, network: nn.Module, source: str) -> None:
        super().__init__()
        self.network, self.source = network, source
        self.embedding_dim = _probe_dim(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.network(x)
        return y.mean(dim=(2, 3)) if y.ndim == 4 else y.flatten(1)


def _probe_dim(backbone: ExternalBackbone) -> int:
    was_training = backbone.training
    backbone.eval()  # batch norm over a single probe image fails in training mode
    try:
        with torch.no_grad():
            channels = _in_channels(backbone.network)
            dim = backbone(torch.zeros(1, channels, _PROBE_SIDE, _PROBE_SIDE)).shape[1]
    finally:
        backbone.train(was_training)
    return int(dim)


def _in_channels(network: nn.Module) -> int:
    first = next((m for m in network.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


def _import(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MetaedgeError(f"{module} is not importable ({e}); install it: pip install 'metaedge[{extra}]'") from None


def unknown_name(family: str, name: str, known: list[str]) -> MetaedgeError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(f'{family}:{c}' for c in close)}" if close else f"{len(known)} names known"
    return MetaedgeError(f"unknown {family} backbone {name!r}; {hint}")


@register_family("timm")
def timm_backbone(name: str, in_channels: int = 3) -> ExternalBackbone:
    """timm's `name` with num_classes=0 (classifier removed, its own global pooling kept) and `in_chans`."""
    timm = _import("timm", "timm")
    known = timm.list_models()
    if name not in known:
        raise unknown_name("timm", name, known)
    network = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
    return ExternalBackbone(network, f"timm {timm.__version__}")


# Where torchvision's classification networks keep their classifier, in the order to look.
_HEADS = ("fc", "classifier", "heads", "head")


@register_family("torchvision")
def torchvision_backbone(name: str, in_channels: int = 3) -> ExternalBackbone:
    """torchvision's `name` (weights=None) with its classifier replaced by the identity: the pooled features.

    torchvision's networks read three channels; for grayscale data use a 3-channel preprocessing (the gray
    level is then repeated, as torchvision's own Grayscale(num_output_channels=3) does).
    """
    models = _import("torchvision.models", "timm")
    known = models.list_models(module=models)
    if name not in known:
        raise unknown_name("torchvision", name, known)
    if in_channels != 3:
        raise ValueError(f"torchvision networks read 3-channel images, not {in_channels}: use an RGB preprocessing")
    network = models.get_model(name, weights=None)
    head = next((h for h in _HEADS if isinstance(getattr(network, h, None), nn.Module)), None)
    if head is None:
        raise ValueError(f"torchvision {name} has none of the classifier attributes {list(_HEADS)}")
    setattr(network, head, nn.Identity())
    import torchvision

    return ExternalBackbone(network, f"torchvision {torchvision.__version__}")
