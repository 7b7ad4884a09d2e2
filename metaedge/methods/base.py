"""The base class every meta-learning method derives from, and the registry that finds methods by name."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from metaedge.errors import MetaedgeError
from metaedge.models.views import TestTimeViews

_METHODS: dict[str, type[FewShotMethod]] = {}


def register_method(name: str) -> Callable[[type[FewShotMethod]], type[FewShotMethod]]:
    def add(cls: type[FewShotMethod]) -> type[FewShotMethod]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add


def list_methods() -> list[str]:
    return sorted(_METHODS)


def create_method(name: str, backbone: nn.Module, **config) -> FewShotMethod:
    if name not in _METHODS:
        raise MetaedgeError(f"unknown algorithm {name!r}; available: {', '.join(list_methods())}")
    return _METHODS[name](backbone, **config)


class FewShotMethod(nn.Module):
    """A backbone plus the rule that turns a support set into a classifier of queries.

    Subclasses implement `episode_logits` (differentiable, used for meta-training) and may override
    `classify_embeddings` (used for evaluation on precomputed embeddings, where the method allows it).
    """

    name = "base"

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.views: TestTimeViews | None = None
        self.enroll_views: TestTimeViews | None = None  # None: support images are embedded as queries are

    def set_views(self, count: int, size: int) -> None:
        """Embed in eval mode as the mean over `count` fixed warps of each image (models/views.py); 1 turns it off."""
        self.views = TestTimeViews(count, size) if count > 1 else None

    def set_enroll_views(self, count: int | None, size: int) -> None:
        """Embed SUPPORT images (enrollment) through `count` views, queries as `set_views` says; None: the same.

        Enrollment happens once per class and classification once per image, so views spent on the support
        set make prototypes steadier without adding anything to the latency of classifying.
        """
        self.enroll_views = None if count is None else TestTimeViews(count, size)

    def config(self) -> dict:
        """The method's hyperparameters, as stored in a checkpoint and passed back to the constructor."""
        return {}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> embeddings (B, D)."""
        if self.views is not None and not self.training:
            # Views are a test-time device: training sees random warps of its own (data/augment.py).
            return self.views(self.backbone, images)
        return self.backbone(images)

    def embed_support(self, images: torch.Tensor) -> torch.Tensor:
        """Support (enrollment) images (B, C, H, W) -> embeddings (B, D): through the enroll views where set."""
        if self.enroll_views is not None and not self.training:
            return self.enroll_views(self.backbone, images)
        return self.embed(images)

    def episode_logits(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, way: int
    ) -> torch.Tensor:
        """support (way*shot, C, H, W), support_labels (way*shot,), query (Q, C, H, W) -> logits (Q, way)."""
        raise NotImplementedError

    def classify_embeddings(
        self, support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, way: int
    ) -> np.ndarray:
        """support (S, D), support_labels (S,), query (Q, D) float32 embeddings -> logits (Q, way)."""
        raise NotImplementedError

    @property
    def embeds_independently(self) -> bool:
        """True when evaluation may embed every image once and classify episodes from the cached embeddings."""
        return True
