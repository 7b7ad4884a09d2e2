"""ResNet-12: the deeper few-shot backbone of TADAM / MetaOptNet / Meta-Baseline (Oreshkin et al., 2018; Lee et
al., 2019): four residual blocks of three 3x3 convolutions, each block ending in a 2x2 max-pool.

Channels double from block to block from `width` (64 gives the common 64-128-256-512 variant; the 640-wide
original of miniImageNet is far beyond an edge budget). At 28x28 the four pools leave a 1x1 map, at 84x84 5x5;
global average pooling makes the embedding `8 * width` either way. DropBlock, which the original adds against
overfitting on miniImageNet, is left out: training already warps every image (data/augment.py).

`activation="relu"` swaps the original LeakyReLU(0.1) for ReLU: an int8 graph then folds every activation into
the convolution or addition before it (ONNX Runtime's QLinearLeakyRelu nodes go), which took 5-12% off a
width-16 network's classify call on the dev CPU (BENCHMARKS.md, issue 17). Same parameters, same state dict.
"""

from __future__ import annotations

import torch
from torch import nn

from metaedge.models._registry import register_backbone

ACTIVATIONS = ("leaky", "relu")


def _activation(name: str) -> nn.Module:
    return nn.LeakyReLU(0.1) if name == "leaky" else nn.ReLU()


def _conv_bn(cin: int, cout: int, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)]


class ResidualBlock(nn.Module):
    """(B, cin, H, W) -> (B, cout, H // 2, W // 2): three conv-BN (the activation between), plus a 1x1 conv-BN
    shortcut, the activation, then a 2x2 max-pool."""

    def __init__(self, cin: int, cout: int, activation: str = "leaky") -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(cin, cout), _activation(activation),
            *_conv_bn(cout, cout), _activation(activation),
            *_conv_bn(cout, cout),
        )  # fmt: skip
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, kernel=1))  # channels change in every block
        self.out = nn.Sequential(_activation(activation), nn.MaxPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(nn.Module):
    """Input (B, in_channels, H, W) -> embedding (B, 8 * width); H and W of at least 16 (four halvings)."""

    def __init__(self, in_channels: int = 1, width: int = 64, activation: str = "leaky") -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be at least 1, got {width}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        channels = [in_channels, width, 2 * width, 4 * width, 8 * width]
        self.embedding_dim = channels[-1]
        self.features = nn.Sequential(*(ResidualBlock(a, b, activation) for a, b in zip(channels, channels[1:])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


@register_backbone("resnet12")
def resnet12(in_channels: int = 1, width: int = 64, activation: str = "leaky") -> ResNet12:
    return ResNet12(in_channels=in_channels, width=width, activation=activation)
