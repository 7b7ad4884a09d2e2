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


def test_elastic_bends_locally_and_is_seeded():
    x = torch.rand(1, 1, 28, 28).repeat(4, 1, 1, 1)
    still = dict(degrees=0, translate=0, scale=(1, 1), shear=0)
    a = AffineAugment(**still, elastic=0.05)(x, torch.Generator().manual_seed(2))
    b = AffineAugment(**still, elastic=0.05)(x, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert a.shape == x.shape and not torch.allclose(a, x) and not torch.allclose(a[0], a[1])
    # Displacements stay within the bound: a one-pixel dot moves by at most elastic * side (+ interpolation).
    dot = torch.zeros(8, 1, 28, 28)
    dot[:, :, 14, 14] = 1.0
    moved = AffineAugment(**still, elastic=0.05)(dot, torch.Generator().manual_seed(3))
    ys, xs = torch.nonzero(moved[:, 0] > 0.05, as_tuple=True)[1:]
    assert (ys - 14).abs().max() <= 0.05 * 28 + 1 and (xs - 14).abs().max() <= 0.05 * 28 + 1
