"""ResNet-12: the residual blocks halve the side, the parameter count is the architecture's, and a run exports."""

from __future__ import annotations

import pytest
import torch

from metaedge import checkpoint as ckpt
from metaedge.models import ResNet12, create_backbone


def expected_parameters(in_channels: int, width: int) -> int:
    """Per block: three 3x3 convs, a 1x1 shortcut, four batch norms (weight and bias), no conv biases."""
    total, cin = 0, in_channels
    for cout in (width, 2 * width, 4 * width, 8 * width):
        total += 9 * cin * cout + 2 * 9 * cout * cout + cin * cout + 4 * 2 * cout
        cin = cout
    return total


def test_shapes_and_size():
    net = create_backbone("resnet12", in_channels=1, width=8).eval()
    assert isinstance(net, ResNet12) and net.embedding_dim == 64
    with torch.no_grad():
        assert net.features(torch.rand(2, 1, 28, 28)).shape == (2, 64, 1, 1)
        assert net(torch.rand(3, 1, 84, 84)).shape == (3, 64)
    assert sum(p.numel() for p in net.parameters()) == expected_parameters(1, 8)
    # The common 64-128-256-512 variant on RGB is the published ~8.0 M parameters.
    assert sum(p.numel() for p in ResNet12(in_channels=3, width=64).parameters()) == 7_996_800


def test_the_shortcut_is_used():
    net = ResNet12(width=4).eval()
    block = net.features[0]
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        full = block(x)
        for p in block.shortcut.parameters():
            p.zero_()
        assert not torch.allclose(full, block(x))


def test_bad_width_is_refused():
    from metaedge.errors import MetaedgeError

    with pytest.raises(MetaedgeError, match="backbone 'resnet12' cannot be built"):
        create_backbone("resnet12", width=0)
    with pytest.raises(MetaedgeError, match="backbone 'resnet12' cannot be built"):
        create_backbone("resnet12", width=8, depth=5)  # --depth is Conv4's


@pytest.mark.slow
def test_a_resnet12_run_trains_loads_and_exports_with_parity(omniglot_zips, tmp_path):
    from metaedge.exporter import export_checkpoint
    from metaedge.train import TrainConfig, train

    train(TrainConfig(data=[str(p) for p in omniglot_zips], out=str(tmp_path / "run"), backbone="resnet12", width=4,
                      way=5, query=2, episodes=2, val_every=2, val_episodes=2, seed=0))  # fmt: skip
    loaded = ckpt.load(tmp_path / "run")
    assert loaded.meta["backbone"] == {"name": "resnet12", "kwargs": {"in_channels": 1, "width": 4}}
    assert isinstance(loaded.method.backbone, ResNet12)
    exported = export_checkpoint(tmp_path / "run", tmp_path / "bundle", parity_episodes=10)
    assert exported.parity and all(p.passed and p.min_cosine > 0.9999 for p in exported.parity)
    assert exported.bundle.manifest["embedding_dim"] == 32
