"""Backbone registry: `create_backbone("conv4", in_channels=1)` builds any registered backbone by name;
`create_backbone("timm:resnet18")` one of a family's (a library's) networks."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from metaedge.errors import MetaedgeError

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}
_FAMILIES: dict[str, Callable[..., nn.Module]] = {}  # "timm" -> factory(name, **kwargs) for "timm:NAME"


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a backbone factory reachable by `name` from the CLI, checkpoints and the trainer."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        _BACKBONES[name] = factory
        return factory

    return add


def register_family(prefix: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: `factory(name, **kwargs)` builds the backbones named `prefix:NAME` (models/external.py)."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if prefix in _FAMILIES:
            raise ValueError(f"backbone family {prefix!r} is registered twice")
        _FAMILIES[prefix] = factory
        return factory

    return add


def list_backbones() -> list[str]:
    return sorted(_BACKBONES) + [f"{family}:NAME" for family in sorted(_FAMILIES)]


def create_backbone(name: str, **kwargs) -> nn.Module:
    """A new backbone; every backbone maps (B, C, H, W) images to (B, embedding_dim) and has `.embedding_dim`."""
    family, _, inner = name.partition(":")
    if inner and family in _FAMILIES:
        factory, args = _FAMILIES[family], (inner,)
    elif name in _BACKBONES:
        factory, args = _BACKBONES[name], ()
    else:
        close = difflib.get_close_matches(name, [*_BACKBONES, *(f"{f}:" for f in _FAMILIES)], n=3, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}; " if close else ""
        raise MetaedgeError(f"unknown backbone {name!r}; {hint}registered: {', '.join(list_backbones())}")
    try:
        return factory(*args, **kwargs)
    except (TypeError, ValueError) as e:  # a bad --width/--depth, or an edited checkpoint's kwargs
        raise MetaedgeError(f"backbone {name!r} cannot be built with {kwargs}: {e}") from None
