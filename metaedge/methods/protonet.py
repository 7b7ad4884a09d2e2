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


@register_method("protonet")
class ProtoNet(FewShotMethod):
    """metric="sqeuclidean": logits = -||q - p||^2 (the original). metric="cosine": logits = s * cos(q, p) with a
    learned temperature s (kept as log s so it stays positive), as in Chen et al. (2019) and Meta-Baseline.
    """

    def __init__(self, backbone: nn.Module, metric: str = "sqeuclidean", init_scale: float = 10.0) -> None:
        super().__init__(backbone)
        if metric not in METRICS:
            raise MetaedgeError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        self.metric = metric
        self.init_scale = init_scale
        # A parameter for both metrics keeps checkpoints of one shape; sqeuclidean simply leaves it at 1.
        start = math.log(init_scale) if metric == "cosine" else 0.0
        self.log_scale = nn.Parameter(torch.tensor(start), requires_grad=metric == "cosine")

    def config(self) -> dict:
        return {"metric": self.metric, "init_scale": self.init_scale}

    @property
    def scale(self) -> float:
        return float(self.log_scale.detach().exp())

    def episode_logits(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, way: int
    ) -> torch.Tensor:
        # One forward pass for support and query: batch norm sees the whole episode, as at training time.
        z = self.embed(torch.cat([support, query]))
        zs, zq = z[: len(support)], z[len(support) :]
        counts = torch.bincount(support_labels, minlength=way).clamp_min(1).unsqueeze(1)
        protos = torch.zeros(way, z.shape[1], device=z.device, dtype=z.dtype).index_add_(0, support_labels, zs)
        protos = protos / counts
        if self.metric == "sqeuclidean":
            return -torch.cdist(zq, protos).pow(2)
        return self.log_scale.exp() * F.normalize(zq, dim=1) @ F.normalize(protos, dim=1).T

    def classify_embeddings(
        self, support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, way: int
    ) -> np.ndarray:
        return prototype_logits(support, support_labels, query, way, self.metric, self.scale)


def prototype_logits(
    support: np.ndarray, support_labels: np.ndarray, query: np.ndarray, way: int, metric: str, scale: float = 1.0
) -> np.ndarray:
    """support (S, D), support_labels (S,), query (Q, D) -> logits (Q, way), exactly as the device computes them.

    Runs the native kernels (or their reference where the build has none). `scale` applies to cosine only.
    """
    protos = kernels.prototypes(support, support_labels, way, normalize=metric == "cosine")
    return kernels.logits(query, protos, metric=metric, scale=scale if metric == "cosine" else 1.0)
