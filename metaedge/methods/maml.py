"""MAML (Finn et al., 2017) and first-order MAML: every parameter adapts to each task in the inner loop.

The head starts from the normalised class means of the support features (as in Proto-MAML, Triantafillou et
al., 2020), so one model serves any number of classes; the inner loop then updates the backbone and the head
together with `torch.func.functional_call`, never patching modules. Second-order MAML differentiates through
the inner updates (create_graph=True); first-order MAML treats the inner gradients as constants.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metaedge.methods.base import FewShotMethod, register_method
from metaedge.methods.head import imprint


@register_method("maml")
class MAML(FewShotMethod):
    default_first_order = False

    def __init__(self, backbone: nn.Module, inner_steps: int = 5, inner_lr: float = 0.1,
                 init_scale: float = 10.0, first_order: bool | None = None) -> None:  # fmt: skip
        super().__init__(backbone)
        self.inner_steps, self.inner_lr, self.init_scale = inner_steps, inner_lr, init_scale
        self.first_order = self.default_first_order if first_order is None else first_order
        self.metric = "cosine"
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    def config(self) -> dict:
        return {"inner_steps": self.inner_steps, "inner_lr": self.inner_lr, "init_scale": self.init_scale,
                "first_order": self.first_order}  # fmt: skip

    @property
    def embeds_independently(self) -> bool:
        return False  # the backbone itself changes per task

    def episode_logits(self, support, support_labels, query, way):
        params = dict(self.backbone.named_parameters())
        buffers = dict(self.backbone.named_buffers())

        def features(p: dict, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(functional_call(self.backbone, (p, buffers), (x,)), dim=1)

        w, b = imprint(features(params, support), support_labels, way)
        b = b.requires_grad_()  # evaluation too needs gradients here: run it under torch.enable_grad()
        for _ in range(self.inner_steps):
            loss = F.cross_entropy(features(params, support) @ w.T + b, support_labels)
            # retain_graph: the outer loss still needs the graph of the head initialisation, even first-order
            grads = torch.autograd.grad(loss, [*params.values(), w, b], create_graph=not self.first_order,
                                        retain_graph=True)  # fmt: skip
            params = {k: v - self.inner_lr * g for (k, v), g in zip(params.items(), grads[:-2])}
            w, b = w - self.inner_lr * grads[-2], b - self.inner_lr * grads[-1]
        return self.log_scale.exp() * (features(params, query) @ w.T + b)


@register_method("fomaml")
class FOMAML(MAML):
    default_first_order = True
