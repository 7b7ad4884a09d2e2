"""Random affine augmentation: identity at zero range, seeded, shape-preserving, actually varies."""

from __future__ import annotations

import torch

from metaedge.data import AffineAugment


def test_zero_ranges_are_the_identity():
    x = torch.rand(4, 1, 28, 28)
    y = AffineAugment(degrees=0, translate=0, scale=(1, 1), shear=0)(x)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_seeded_and_per_image():
    x = torch.rand(1, 1, 28, 28).repeat(6, 1, 1, 1)
    aug = AffineAugment()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[0], a[1])  # each image gets its own warp
    assert not torch.allclose(a, x)
