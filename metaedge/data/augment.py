"""Image augmentation for meta-training: random affine warps, optionally with a smooth elastic distortion on top
(Simard et al., 2003), applied to a whole batch at once on its device."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AffineAugment:
    """Ranges of a random affine transform, drawn independently per image.

    degrees: rotation in [-degrees, degrees]; translate: shift as a fraction of the image side;
    scale: zoom factor in [scale[0], scale[1]]; shear: shear angle in [-shear, shear] degrees.
    elastic: largest displacement of the elastic field as a fraction of the image side (0: none); the field is
    random on a coarse `elastic_grid` x `elastic_grid` lattice and interpolated smoothly, so strokes bend and
    thicken locally the way two people's drawings of one character differ, which an affine map cannot do.
    """

    degrees: float = 10.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.9, 1.1)
    shear: float = 10.0
    elastic: float = 0.0
    elastic_grid: int = 4

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images: float tensor (B, C, H, W) -> the same shape, each image warped by its own random affine."""
        b = images.shape[0]

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(b, generator=generator, device=images.device)

        angle = uniform(-self.degrees, self.degrees) * (math.pi / 180)
        shear = uniform(-self.shear, self.shear) * (math.pi / 180)
        zoom = uniform(*self.scale)
        tx, ty = (uniform(-self.translate, self.translate) * 2 for _ in range(2))  # grid coordinates span 2
        cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
        # affine_grid maps output to input coordinates, so this is the inverse warp; for random ranges
        # symmetric about the identity the distribution of warps is the same.
        theta = torch.stack(
            [
                torch.stack([cos / zoom, (-sin + tan * cos) / zoom, tx], dim=1),
                torch.stack([sin / zoom, (cos + tan * sin) / zoom, ty], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        if self.elastic > 0:
            # Grid coordinates span 2, so a displacement of `elastic` of the side is 2 * elastic in them.
            coarse = (torch.rand(b, 2, self.elastic_grid, self.elastic_grid, generator=generator,
                                 device=images.device) * 2 - 1) * (2 * self.elastic)  # fmt: skip
            field = F.interpolate(coarse, size=images.shape[-2:], mode="bicubic", align_corners=True)
            grid = grid + field.permute(0, 2, 3, 1)
        # Border padding repeats the edge, which is background on centred characters and objects alike.
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
