"""Backbones, reachable by name through the registry."""

from metaedge.models import conv4 as _conv4  # noqa: F401  (registers "conv4")
from metaedge.models import ensemble as _ensemble  # noqa: F401  (registers "ensemble")
from metaedge.models import external as _external  # noqa: F401  (registers the "timm:" and "torchvision:" families)
from metaedge.models import fcn as _fcn  # noqa: F401  (registers "fcn")
from metaedge.models import resnet12 as _resnet12  # noqa: F401  (registers "resnet12")
from metaedge.models._registry import create_backbone, list_backbones, register_backbone
from metaedge.models.conv4 import Conv4
from metaedge.models.ensemble import Ensemble
from metaedge.models.fcn import DenseFCN
from metaedge.models.resnet12 import ResNet12

__all__ = ["Conv4", "DenseFCN", "Ensemble", "ResNet12", "create_backbone", "list_backbones", "register_backbone"]
