"""One-shot segmentation by prototypes: find the enrolled class's pixels in a scene (PANet-style, plus a light decoder).

A fully convolutional backbone maps the scene to a dense feature map (stride 4) and each reference to a
prototype by masked average pooling over its ink. Every cell of the scene's map gets the cosine similarity
to each prototype (PANet's decoder-free scoring: the score map is `kernels.logits` with the map's H*W cells
as the queries). Two heads turn a score map into a full-resolution mask:
- decoder-free: scale * cosine + bias, upsampled bilinearly (the baseline);
- decoder: a few convolutions over the score map and the scene's features at stride 4, each cell emitting
  its 4x4 pixels (pixel shuffle), plus a full-resolution "is there ink here" term from the scene itself.
The decoder is trained on top of the cosine head, whose loss stays on as an auxiliary, so one checkpoint
can be evaluated both ways (`use_decoder`).

Export splits naturally in three graphs: scene -> feature map, reference -> prototype, and (scene, feature
map, scores) -> mask logits for any number of classes; the scoring between them is the native kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from metaedge.errors import MetaedgeError
from metaedge.methods.base import FewShotMethod, register_method


class MaskDecoder(nn.Module):
    """(image (B, Cin, H, W), features (B, D, H/s, W/s), scores (B, C, H/s, W/s)) -> mask logits (B, C, H, W).

    The features' share of the first layer is computed once per scene and added to each class's share
    (a convolution of a concatenation is the sum of the convolutions), so each further class costs two
    small convolutions at stride s. `scores` are cosine similarities, one map per class.
    """

    def __init__(self, dim: int, stride: int, in_channels: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.stride, self.hidden = stride, hidden
        self.from_features = nn.Conv2d(dim, hidden, kernel_size=3, padding=1)
        self.from_scores = nn.Conv2d(1, hidden, kernel_size=3, padding=1, bias=False)
        self.refine = nn.Conv2d(hidden, hidden, kernel_size=3, padding=2, dilation=2)
        self.to_pixels = nn.Conv2d(hidden, stride * stride, kernel_size=1)
        self.ink = nn.Sequential(nn.Conv2d(in_channels, 8, kernel_size=3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))

    def forward(self, image: torch.Tensor, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        b, c, h, w = scores.shape
        shared = self.from_features(features).unsqueeze(1)  # (B, 1, hidden, h, w)
        per_class = self.from_scores(scores.reshape(b * c, 1, h, w)).reshape(b, c, self.hidden, h, w)
        x = F.relu(shared + per_class).reshape(b * c, self.hidden, h, w)
        x = F.relu(self.refine(x))
        pixels = F.pixel_shuffle(self.to_pixels(x), self.stride)  # (B*C, 1, H, W)
        return pixels.reshape(b, c, h * self.stride, w * self.stride) + self.ink(image)


@register_method("protoseg")
class ProtoSeg(FewShotMethod):
    """Prototype segmentation. `embed` maps references (B, C, h, w) to prototypes (B, D), `dense` scenes
    (B, C, H, W) to feature maps (B, D, H/4, W/4); `mask_logits` scores and decodes them.

    decoder: train and use the light decoder (False: the decoder-free baseline alone).
    """

    def __init__(
        self, backbone: nn.Module, decoder: bool = True, init_scale: float = 10.0, context: int = 96
    ) -> None:
        super().__init__(backbone)
        self.context = context
        if not hasattr(backbone, "stride"):
            raise MetaedgeError("protoseg needs a dense backbone (one with an output stride, e.g. 'fcn')")
        self.stride = int(backbone.stride)
        self.init_scale = init_scale
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        # Most pixels are background: start the decoder-free head below zero, at cosine 0.5.
        self.bias = nn.Parameter(torch.tensor(-0.5 * init_scale))
        in_channels = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d)).in_channels
        self.decoder = MaskDecoder(backbone.embedding_dim, self.stride, in_channels) if decoder else None

    def config(self) -> dict:
        return {"decoder": self.decoder is not None, "init_scale": self.init_scale, "context": self.context}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """References (B, C, h, w), black background (0 after preprocessing) -> prototypes (B, D).

        Each reference is centred on a black `context` x `context` canvas, the size of a training scene, and
        goes through the backbone as a scene does: its features see the same surroundings, and in training it
        shares the scenes' batch, so batch norm gives references and scenes one set of statistics.
        """
        padded = self.pad(images)
        return self.pool(self.backbone(padded), padded)

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, context, context), the image centred on black (0); larger sides stay as they are."""
        h, w = images.shape[-2:]
        dy, dx = max(0, self.context - h), max(0, self.context - w)
        return F.pad(images, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))

    def pool(self, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Masked average pooling: features (B, D, h, w) of images (B, C, H, W) -> (B, D), each cell weighed by
        the fraction of its pixels that carry ink, so the prototype describes the character, not the black."""
        ink = (images.abs().amax(dim=1, keepdim=True) > 0).to(features.dtype)
        weight = F.avg_pool2d(ink, self.stride)  # (B, 1, h, w)
        return (features * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp_min(1e-6)

    def dense(self, scenes: torch.Tensor) -> torch.Tensor:
        """Scenes (B, C, H, W) -> feature maps (B, D, H/4, W/4)."""
        return self.backbone(scenes)

    @staticmethod
    def cosine(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """features (B, D, h, w), prototypes (B, C, D) -> cosine similarity maps (B, C, h, w)."""
        return torch.einsum("bdhw,bcd->bchw", F.normalize(features, dim=1), F.normalize(prototypes, dim=2))

    def coarse_logits(self, cosine: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The decoder-free head: cosine maps (B, C, h, w) -> mask logits (B, C, H, W), bilinear upsampling."""
        logits = self.log_scale.exp() * cosine + self.bias
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def mask_logits(
        self, scenes: torch.Tensor, prototypes: torch.Tensor, use_decoder: bool | None = None
    ) -> torch.Tensor:
        """scenes (B, Cin, H, W), prototypes (B, C, D) -> mask logits (B, C, H, W); use_decoder None: if it has one."""
        use_decoder = self.decoder is not None if use_decoder is None else use_decoder
        if use_decoder and self.decoder is None:
            raise MetaedgeError("this protoseg model was trained without a decoder")
        features = self.dense(scenes)
        cosine = self.cosine(features, prototypes)
        if use_decoder:
            return self.decoder(scenes, features, cosine)
        return self.coarse_logits(cosine, scenes.shape[-2:])

    def prototypes(self, references: torch.Tensor) -> torch.Tensor:
        """references (B, K, C, h, w), K drawings of each scene's class -> prototypes (B, 1, D), their mean."""
        b, k = references.shape[:2]
        return self.embed(references.flatten(0, 1)).reshape(b, k, -1).mean(dim=1, keepdim=True)

    def episode_loss(
        self, scenes: torch.Tensor, masks: torch.Tensor, references: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """scenes (B, Cin, H, W), masks bool (B, H, W), references (B, K, Cin, h, w) -> (per-scene loss (B,),
        per-scene IoU (B,) of the output mask at probability 0.3, detached).

        The loss is binary cross-entropy plus a soft IoU loss (a target is about 1% of the pixels: cross-entropy
        alone is content to answer "background"); with a decoder, the decoder-free head's loss is added so the
        score map stays a usable cosine on its own.
        """
        b, k = references.shape[:2]
        padded = self.pad(references.flatten(0, 1))
        # One backbone pass over scenes and references: batch norm normalises both with the same statistics.
        both = self.backbone(torch.cat([scenes, padded.contiguous(memory_format=torch.channels_last)]))
        features = both[:b]
        prototypes = self.pool(both[b:], padded).reshape(b, k, -1).mean(dim=1, keepdim=True)
        cosine = self.cosine(features, prototypes)
        target = masks.unsqueeze(1).to(scenes.dtype)
        coarse = self.coarse_logits(cosine, scenes.shape[-2:])
        loss = segmentation_loss(coarse, target)
        out = coarse
        if self.decoder is not None:
            out = self.decoder(scenes, features, cosine)
            loss = loss + segmentation_loss(out, target)
        return loss, mask_iou(torch.sigmoid(out.detach()) > 0.3, target > 0.5)

    def episode_logits(self, support, support_labels, query, way):
        raise MetaedgeError("protoseg segments scenes; it does not classify images (use --task segment)")


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits, target (B, C, H, W), target in {0, 1} -> per-scene loss (B,): cross-entropy + (1 - soft IoU)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(1, 2, 3))
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    union = (p + target - p * target).sum(dim=(1, 2, 3))
    return bce + 1.0 - (inter + 1.0) / (union + 1.0)


def mask_iou(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Boolean masks (B, ...) -> IoU per scene (B,); two empty masks agree perfectly (IoU 1)."""
    pred, truth = pred.flatten(1), truth.flatten(1)
    inter = (pred & truth).sum(1).float()
    union = (pred | truth).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
