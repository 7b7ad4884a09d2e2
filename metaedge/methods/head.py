"""The differentiable twin of `kernels.adapt_head`: the inner loop that meta-training learns through.

Same maths as the device kernel, step for step: W0 = L2-normalised class means (weight imprinting), b0 = 0,
then `steps` of plain gradient descent on mean cross-entropy + 0.5 * weight_decay * ||W||^2, with a scalar
or per-parameter step size. What the outer loop learns here is exactly what the device will execute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def imprint(x: torch.Tensor, y: torch.Tensor, way: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, D), y (N,) -> W0 (way, D) the normalised class means, b0 (way,) zeros."""
    counts = torch.bincount(y, minlength=way).clamp_min(1).unsqueeze(1).to(x.dtype)
    means = torch.zeros(way, x.shape[1], dtype=x.dtype, device=x.device).index_add(0, y, x) / counts
    return F.normalize(means, dim=1), torch.zeros(way, dtype=x.dtype, device=x.device)


def adapt_head(
    x: torch.Tensor,
    y: torch.Tensor,
    way: int,
    steps: int,
    lr_weight: torch.Tensor,
    lr_bias: torch.Tensor,
    weight_decay: float = 0.0,
    create_graph: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit a linear softmax head to support features.

    x: (N, D) support features; y: (N,) labels in [0, way).
    lr_weight: scalar, (D,) (one step size per feature, shared by every class: the head's size changes with
    the number of classes, the features do not) or (way, D); lr_bias: scalar or (way,).
    create_graph: keep the graph through the updates (second order); False gives first-order gradients.
    Returns W (way, D), b (way,).
    """
    w, b = imprint(x, y, way)
    # The inner loop differentiates with respect to W and b even where nothing upstream needs gradients.
    w = w if w.requires_grad else w.detach().requires_grad_()
    b = b.requires_grad_()
    for _ in range(steps):
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * weight_decay * (w * w).sum()
        # retain_graph: the outer loss still needs the graph of the imprinted initialisation, even first-order
        gw, gb = torch.autograd.grad(loss, (w, b), create_graph=create_graph, retain_graph=True)
        w = w - lr_weight * gw
        b = b - lr_bias * gb
    return w, b
