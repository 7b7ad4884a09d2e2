"""Conv4: the standard few-shot backbone of four conv-BN-ReLU-maxpool blocks (Vinyals et al., 2016).

`depth` adds blocks for larger inputs: each block halves the side, so 56x56 images need five blocks to end,
like 28x28 with four, on a 1x1 map (a character's layout is then in the channels, not averaged away).
"""

from __future__ import annotations

import torch
from torch import nn

from metaedge.models._registry import register_backbone


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),  # BN's shift makes a conv bias redundant
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    """`depth` blocks (four by default) of `width` channels, then global average pooling.

    Input (B, in_channels, H, W) -> embedding (B, width). At 28x28 with four blocks the last feature map is
    1x1, so the pooling is a no-op and this is exactly the classic 64-dimensional Conv4; at larger sizes the
    pooling keeps the embedding size fixed instead of letting it grow with the image.
    """

    def __init__(self, in_channels: int = 1, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be at least 1, got width {width}, depth {depth}")
        self.embedding_dim = width
        self.features = nn.Sequential(_block(in_channels, width), *(_block(width, width) for _ in range(depth - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


@register_backbone("conv4")
def conv4(in_channels: int = 1, width: int = 64, depth: int = 4) -> Conv4:
    return Conv4(in_channels=in_channels, width=width, depth=depth)
