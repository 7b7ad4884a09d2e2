"""Backbone registry: `create_backbone("conv4", in_channels=1)` builds any registered backbone by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from metaedge.errors import MetaedgeError

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a backbone factory reachable by `name` from the CLI, checkpoints and the trainer."""

    def add(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        _BACKBONES[name] = factory
        return factory

    return add


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def create_backbone(name: str, **kwargs) -> nn.Module:
    """A new backbone; every backbone maps (B, C, H, W) images to (B, embedding_dim) and has `.embedding_dim`."""
    if name not in _BACKBONES:
        raise MetaedgeError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}")
    try:
        return _BACKBONES[name](**kwargs)
    except (TypeError, ValueError) as e:  # a bad --width/--depth, or an edited checkpoint's kwargs
        raise MetaedgeError(f"backbone {name!r} cannot be built with {kwargs}: {e}") from None
