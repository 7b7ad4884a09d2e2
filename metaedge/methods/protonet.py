"""Prototypical Networks (Snell et al., 2017): classify a query by its distance to each class's mean embedding."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metaedge import kernels
from metaedge.errors import MetaedgeError
from metaedge.methods.base import FewShotMethod, register_method

METRICS = ("sqeuclidean", "cosine")
LOSS_DISTANCES = ("squared", "plain")  # of the training loss (sqeuclidean metric only)


@register_method("protonet")
class ProtoNet(FewShotMethod):
    """metric="sqeuclidean": logits = -||q - p||^2 (the original). metric="cosine": logits = s * cos(q, p) with a
    learned temperature s (kept as log s so it stays positive), as in Chen et al. (2019) and Meta-Baseline.

    Two training-time choices, both as easyfsl's PrototypicalNetworks makes them where they differ from the
    default (issue 17 measures which matters; scripts/easyfsl_differences.sh):
    loss_distance="plain" (sqeuclidean only): train on logits -||q - p||, not squared. The nearest prototype is
    the same either way, so evaluation and the exported bundle keep the squared metric and the device kernels.
    passes=2: embed support and query images in two forward passes, so in training batch norm normalises each
    set by its own statistics (1: one pass over the whole episode). Eval mode uses running statistics: no change.
    """

    def __init__(
        self, backbone: nn.Module, metric: str = "sqeuclidean", init_scale: float = 10.0,
        loss_distance: str = "squared", passes: int = 1,
    ) -> None:  # fmt: skip
        super().__init__(backbone)
        if metric not in METRICS:
            raise MetaedgeError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        if loss_distance not in LOSS_DISTANCES:
            raise MetaedgeError(f"unknown loss distance {loss_distance!r}; choose one of {', '.join(LOSS_DISTANCES)}")
        if loss_distance == "plain" and metric != "sqeuclidean":
            raise MetaedgeError(f"loss distance 'plain' is the unsquared euclidean distance: it needs metric "
                                f"sqeuclidean, not {metric!r}")  # fmt: skip
        if passes not in (1, 2):
            raise MetaedgeError(f"embedding passes must be 1 (support and query together) or 2 (apart), not {passes}")
        self.metric = metric
        self.init_scale = init_scale
        self.loss_distance = loss_distance
        self.passes = passes
        # A parameter for both metrics keeps checkpoints of one shape; sqeuclidean simply leaves it at 1.
        start = math.log(init_scale) if metric == "cosine" else 0.0
        self.log_scale = nn.Parameter(torch.tensor(start), requires_grad=metric == "cosine")

    def config(self) -> dict:
        extra = {"loss_distance": self.loss_distance} if self.loss_distance != "squared" else {}
        if self.passes != 1:
            extra["passes"] = self.passes
        return {"metric": self.metric, "init_scale": self.init_scale, **extra}

    @property
    def scale(self) -> float:
        return float(self.log_scale.detach().exp())

    def episode_logits(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, way: int
    ) -> torch.Tensor:
        zs, zq = self.embed_episode(support, query)
        return self.logits_from_embeddings(zs, support_labels, zq, way)

    def embed_episode(self, support: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """support (S, C, H, W), query (Q, C, H, W) -> their embeddings (S, D) and (Q, D), in one forward pass
        (batch norm in training sees the whole episode) or, with passes=2, in one pass each."""
        if self.passes == 2:
            return self.embed(support), self.embed(query)
        z = self.embed(torch.cat([support, query]))
        return z[: len(support)], z[len(support) :]

    def logits_from_embeddings(
        self, zs: torch.Tensor, support_labels: torch.Tensor, zq: torch.Tensor, way: int
    ) -> torch.Tensor:
        """Support embeddings (S, D), support_labels (S,), query embeddings (Q, D) -> differentiable logits (Q, way)."""
        protos = class_means(zs, support_labels, way)
        if self.metric == "sqeuclidean":
            distance = torch.cdist(zq, protos)
            return -distance if self.loss_distance == "plain" else -distance.pow(2)
        return self.log_scale.exp() * F.normalize(zq, dim=1) @ F.normalize(protos, dim=1).T

    def classify_embeddings(
        self, support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, way: int
    ) -> np.ndarray:
        return prototype_logits(support, support_labels, query, way, self.metric, self.scale)


def class_means(z: torch.Tensor, labels: torch.Tensor, way: int) -> torch.Tensor:
    """Embeddings (S, D) and their labels (S,) in [0, way) -> each class's mean (way, D), differentiable; a class
    without embeddings gets zeros."""
    counts = torch.bincount(labels, minlength=way).clamp_min(1).unsqueeze(1)
    return torch.zeros(way, z.shape[1], device=z.device, dtype=z.dtype).index_add_(0, labels, z) / counts


def prototype_logits(
    support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, way: int, metric: str, scale: float = 1.0
) -> np.ndarray:
    """support (S, D), support_labels (S,), query (Q, D) -> logits (Q, way), exactly as the device computes them.

    Runs the native kernels (or their reference where the build has none). `scale` applies to cosine only.
    """
    protos = kernels.prototypes(support, support_labels, way, normalize=metric == "cosine")
    return kernels.logits(query, protos, metric=metric, scale=scale if metric == "cosine" else 1.0)
