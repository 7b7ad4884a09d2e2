"""A small fully convolutional backbone: an image in, a dense feature map at 1/4 of its side out (segmentation).

Two conv-BN-ReLU blocks with max-pooling bring the side to 1/4; three more at that stride, the last two
dilated (2 and 4), widen the receptive field to 66 pixels, the size of the largest characters of a
cluttered-Omniglot scene; a 1x1 convolution (no ReLU, so cosine similarities use the whole sphere) gives the
embedding. Any input side that is a multiple of 4 works: the graph is the same for scenes and references.
"""

from __future__ import annotations

import torch
from torch import nn

from metaedge.models._registry import register_backbone


def _conv(cin: int, cout: int, dilation: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel_size=3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class DenseFCN(nn.Module):
    """Input (B, in_channels, H, W), H and W multiples of 4 -> feature map (B, embedding_dim, H/4, W/4).

    Channels: width/2 at full resolution, width at 1/2, 2 * width at 1/4; embedding_dim = 2 * width.
    Unlike the classification backbones it does not pool to one vector: `stride` says how the map's cells
    sit on the input (cell (i, j) is centred near pixel (4i + 1.5, 4j + 1.5)).
    """

    stride = 4

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        if width < 2 or width % 2:
            raise ValueError(f"width must be an even number >= 2, got {width}")
        self.embedding_dim = 2 * width
        self.features = nn.Sequential(
            *_conv(in_channels, width // 2), nn.MaxPool2d(2),
            *_conv(width // 2, width), nn.MaxPool2d(2),
            *_conv(width, 2 * width),
            *_conv(2 * width, 2 * width, dilation=2),
            *_conv(2 * width, 2 * width, dilation=4),
            nn.Conv2d(2 * width, self.embedding_dim, kernel_size=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_backbone("fcn")
def fcn(in_channels: int = 3, width: int = 32) -> DenseFCN:
    return DenseFCN(in_channels=in_channels, width=width)
