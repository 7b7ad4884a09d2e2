"""Ensemble: several trained backbones as one network, each reading the image at its own resolution.

Networks trained apart make different mistakes. With squared euclidean distances, concatenating their
embeddings adds their distances, so a query goes to the class that is near in every member. Each member's
embedding is multiplied by a fixed scale (set when the members are combined: metaedge/ensemble.py) so that no
member outweighs the others just because its embeddings are spread wider.

The input is the largest member's size; a smaller member reads it average-pooled by an integer factor, which
is box downsampling again. Measured: the Conv4-128 model trained at 28 px classifies 56 px images pooled 2x2
as well as its own 28 px ones (94.26% vs 94.28%, within-alphabet 20-way 1-shot, 1000 episodes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metaedge.models._registry import create_backbone, register_backbone


class Ensemble(nn.Module):
    """Members run side by side: (B, C, S, S) -> (B, sum of the members' embedding dims).

    members: one dict per member: "name" and "kwargs" of its backbone, "size" (its input side, dividing
    `input_size`) and "scale" (the factor its embedding is multiplied by).
    """

    def __init__(self, members: list[dict], in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        for m in members:
            if m["size"] > input_size or input_size % m["size"]:
                raise ValueError(f"member size {m['size']} does not divide the input size {input_size}")
            if m["kwargs"].get("in_channels", in_channels) != in_channels:
                raise ValueError(f"member reads {m['kwargs']['in_channels']} channels, the ensemble {in_channels}")
        self.members = nn.ModuleList(create_backbone(m["name"], **m["kwargs"]) for m in members)
        self.factors = [input_size // m["size"] for m in members]
        self.scales = [float(m["scale"]) for m in members]
        self.embedding_dim = sum(net.embedding_dim for net in self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for net, factor, scale in zip(self.members, self.factors, self.scales, strict=True):
            out.append(net(F.avg_pool2d(x, factor) if factor > 1 else x) * scale)
        return torch.cat(out, dim=1)


@register_backbone("ensemble")
def ensemble(members: list[dict], in_channels: int = 1, input_size: int = 28) -> Ensemble:
    return Ensemble(members, in_channels=in_channels, input_size=input_size)
