"""The learned inner loop: PyTorch (what training differentiates) and the device kernel agree step for step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metaedge import checkpoint as ckpt
from metaedge import kernels
from metaedge.methods.head import adapt_head

META = {
    "backbone": {"name": "conv4", "kwargs": {"in_channels": 1, "width": 16}},
    "preprocess": {"channels": 1, "size": 28, "invert": True, "mean": [0.0], "std": [1.0], "resample": "box"},
}


def episode(way=5, shot=5, dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(way * shot, dim, generator=g), dim=1)
    y = torch.arange(way).repeat_interleave(shot)
    return x, y


@pytest.mark.parametrize("per_feature", [False, True])
def test_torch_inner_loop_matches_the_kernel(per_feature):
    x, y = episode()
    lr_w = torch.rand(64) * 2 if per_feature else torch.tensor(1.5)
    lr_b = torch.tensor(0.7)
    w, b = adapt_head(x, y, 5, steps=20, lr_weight=lr_w, lr_bias=lr_b, weight_decay=1e-3, create_graph=False)
    kw = dict(lr_weight=np.broadcast_to(lr_w.numpy(), (5, 64)).copy(), lr_bias=np.full(5, 0.7, np.float32))
    kw = kw if per_feature else dict(lr_bias=np.full(5, 0.7, np.float32))
    kw2, kb2 = kernels.adapt_head(x.numpy(), y.numpy(), 5, steps=20, lr=1.5, weight_decay=1e-3, init="prototypes", **kw)
    np.testing.assert_allclose(kw2, w.detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(kb2, b.detach().numpy(), atol=1e-4)


@pytest.mark.parametrize("algorithm", ["anil", "metasgd"])
def test_method_episode_equals_device_path(algorithm):
    torch.manual_seed(0)
    method = ckpt.build_method({**META, "algorithm": {"name": algorithm, "config": {"inner_steps": 8}}}).eval()
    if algorithm == "metasgd":
        with torch.no_grad():  # learned step sizes that differ per feature, as after training
            method.lr_weight.copy_(torch.rand(16) * 2)
    images = torch.rand(5 * 3 + 10, 1, 28, 28)
    labels = torch.arange(5).repeat_interleave(3)
    reference = (
        method.episode_logits(images[:15], labels, images[15:], 5).detach().numpy() / method.log_scale.exp().item()
    )
    with torch.no_grad():
        z = method.embed(images).numpy()
    device = method.classify_embeddings(z[:15], labels.numpy(), z[15:], 5)
    np.testing.assert_allclose(device, reference, atol=1e-4)
    np.testing.assert_array_equal(device.argmax(1), reference.argmax(1))


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "anil", "metasgd"])
def test_meta_gradients_reach_the_backbone(algorithm):
    torch.manual_seed(0)
    method = ckpt.build_method({**META, "algorithm": {"name": algorithm, "config": {"inner_steps": 2}}}).train()
    images, labels = torch.rand(5 * 2 + 5, 1, 28, 28), torch.arange(5).repeat_interleave(2)
    loss = F.cross_entropy(method.episode_logits(images[:10], labels, images[10:], 5), torch.arange(5))
    loss.backward()
    first_conv = method.backbone.features[0][0].weight.grad
    assert first_conv is not None and first_conv.abs().sum() > 0
    if algorithm == "metasgd":
        assert method.lr_weight.grad is not None and method.lr_weight.grad.abs().sum() > 0
    if algorithm == "anil":
        assert method.lr_weight.grad is None  # ANIL's step size is fixed


def test_second_order_differs_from_first_order():
    """MAML's meta-gradient includes the Hessian term; FOMAML's does not: on the same task they must differ."""
    grads = {}
    for name in ("maml", "fomaml"):
        torch.manual_seed(0)
        method = ckpt.build_method({**META, "algorithm": {"name": name, "config": {"inner_steps": 2}}}).train()
        torch.manual_seed(1)
        images, labels = torch.rand(15, 1, 28, 28), torch.arange(5).repeat_interleave(2)
        F.cross_entropy(method.episode_logits(images[:10], labels, images[10:], 5), torch.arange(5)).backward()
        grads[name] = method.backbone.features[0][0].weight.grad.clone()
    assert not torch.allclose(grads["maml"], grads["fomaml"], atol=1e-7)
