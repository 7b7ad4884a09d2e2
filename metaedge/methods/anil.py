"""ANIL (Raghu et al., 2020) and Meta-SGD (Li et al., 2017) on the head: only a linear head adapts per task.

The backbone is meta-learned in the outer loop, through (second-order) or around (first-order) the inner
loop `methods.head.adapt_head`, which is the device kernel's twin. Meta-SGD also learns the inner step sizes:
one per feature for the weights (shared by the classes, since the number of classes changes between tasks)
and one for the biases.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metaedge import kernels
from metaedge.methods.base import FewShotMethod, register_method
from metaedge.methods.head import adapt_head


@register_method("anil")
class ANIL(FewShotMethod):
    """Features are L2-normalised (the head sees what a cosine model sees); query logits of the adapted head
    are multiplied by a learned temperature for the outer loss only (it does not change any decision).
    """

    learns_step_sizes = False

    def __init__(self, backbone: nn.Module, inner_steps: int = 10, inner_lr: float = 1.0,
                 weight_decay: float = 0.0, first_order: bool = False, init_scale: float = 10.0) -> None:  # fmt: skip
        super().__init__(backbone)
        self.inner_steps, self.inner_lr, self.weight_decay = inner_steps, inner_lr, weight_decay
        self.first_order, self.init_scale = first_order, init_scale
        self.metric = "cosine"
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        dim = backbone.embedding_dim
        # Kept as parameters for both methods so checkpoints have one layout; ANIL does not train them.
        self.lr_weight = nn.Parameter(torch.full((dim,), inner_lr), requires_grad=self.learns_step_sizes)
        self.lr_bias = nn.Parameter(torch.tensor(inner_lr), requires_grad=self.learns_step_sizes)

    def config(self) -> dict:
        return {"inner_steps": self.inner_steps, "inner_lr": self.inner_lr, "weight_decay": self.weight_decay,
                "first_order": self.first_order, "init_scale": self.init_scale}  # fmt: skip

    def adaptation(self) -> dict:
        """The inner loop as the device must run it (written into the bundle's manifest by export)."""
        return {"head_init": "prototypes", "steps": self.inner_steps, "lr": self.inner_lr,
                "weight_decay": self.weight_decay, "normalize_features": True,
                "per_parameter_lr": self.learns_step_sizes}  # fmt: skip

    def episode_logits(self, support, support_labels, query, way):
        z = F.normalize(self.embed(torch.cat([support, query])), dim=1)
        zs, zq = z[: len(support)], z[len(support) :]
        w, b = adapt_head(zs, support_labels, way, self.inner_steps, self.lr_weight, self.lr_bias,
                          self.weight_decay, create_graph=not self.first_order)  # fmt: skip
        return self.log_scale.exp() * (zq @ w.T + b)

    def classify_embeddings(self, support, support_labels, query, way) -> np.ndarray:
        # The device's own kernel, with the learned step sizes broadcast to the head's shape.
        zs = support / np.maximum(np.linalg.norm(support, axis=1, keepdims=True), 1e-12)
        zq = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
        lr_w, lr_b = self.step_sizes(way)
        w, b = kernels.adapt_head(zs, support_labels, way, steps=self.inner_steps, lr=self.inner_lr,
                                  weight_decay=self.weight_decay, init="prototypes",
                                  lr_weight=lr_w, lr_bias=lr_b)  # fmt: skip
        return zq @ w.T + b

    def step_sizes(self, way: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per-parameter step sizes for a `way`-class head: (way, D) and (way,), or (None, None) for ANIL."""
        if not self.learns_step_sizes:
            return None, None
        lr_w = self.lr_weight.detach().cpu().numpy().astype(np.float32)
        lr_b = float(self.lr_bias.detach())
        return np.broadcast_to(lr_w, (way, len(lr_w))).copy(), np.full(way, lr_b, dtype=np.float32)


@register_method("metasgd")
class MetaSGD(ANIL):
    """ANIL whose inner step sizes are meta-learned too (per feature for W, one for b)."""

    learns_step_sizes = True
