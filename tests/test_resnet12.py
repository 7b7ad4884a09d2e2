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
    with pytest.raises(MetaedgeError, match="activation must be one of leaky, relu, got 'gelu'"):
        create_backbone("resnet12", width=8, activation="gelu")
    with pytest.raises(MetaedgeError, match="backbone 'conv4' cannot be built .*activation"):
        create_backbone("conv4", width=8, activation="relu")  # Conv4 has ReLU already


def test_relu_keeps_the_parameters_and_folds_into_the_int8_graph(tmp_path):
    import warnings

    import numpy as np

    from metaedge.quantize import op_counts, quantize_int8
    from metaedge.train import TrainConfig, _backbone_kwargs

    leaky, relu = ResNet12(width=4).eval(), create_backbone("resnet12", width=4, activation="relu").eval()
    relu.load_state_dict(leaky.state_dict())  # the same tensors by the same names: --init-weights moves across
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(leaky(x), relu(x))
        leaky.apply(lambda m: setattr(m, "negative_slope", 0.0) if isinstance(m, torch.nn.LeakyReLU) else None)
        torch.testing.assert_close(leaky(x), relu(x), rtol=0, atol=0)  # ReLU is LeakyReLU with slope 0
    # Why it exists: the quantized graph has no activation node left, where LeakyReLU keeps one per activation.
    images = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    counts = {}
    for name, net in (("leaky", ResNet12(width=4)), ("relu", relu)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net.eval(), (x,), str(tmp_path / f"{name}.onnx"), dynamo=True, input_names=["images"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}}, opset_version=18,
                              optimize=True, verbose=False, external_data=False)  # fmt: skip
        quantize_int8(tmp_path / f"{name}.onnx", tmp_path / f"{name}-int8.onnx", images, "images")
        quantized, left_float = op_counts(tmp_path / f"{name}-int8.onnx")
        counts[name] = quantized | left_float
    assert counts["leaky"].get("QLinearLeakyRelu") == 12
    assert not {"QLinearLeakyRelu", "Relu", "LeakyRelu"} & set(counts["relu"])
    assert counts["relu"]["QLinearConv"] == counts["leaky"]["QLinearConv"] == 16
    # A run records the activation only where it is not the default, so older checkpoints read as they were.
    config = dict(data=[], out=str(tmp_path / "run"), backbone="resnet12", width=4)
    assert "activation" not in _backbone_kwargs(TrainConfig(**config))
    assert _backbone_kwargs(TrainConfig(**config, activation="relu"))["activation"] == "relu"


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["leaky", "relu"])
def test_a_resnet12_run_trains_loads_and_exports_with_parity(omniglot_zips, tmp_path, activation):
    from metaedge.exporter import export_checkpoint
    from metaedge.train import TrainConfig, train

    train(TrainConfig(data=[str(p) for p in omniglot_zips], out=str(tmp_path / "run"), backbone="resnet12", width=4,
                      activation=activation, way=5, query=2, episodes=2, val_every=2, val_episodes=2,
                      seed=0))  # fmt: skip
    loaded = ckpt.load(tmp_path / "run")
    kwargs = {"in_channels": 1, "width": 4} | ({"activation": "relu"} if activation == "relu" else {})
    assert loaded.meta["backbone"] == {"name": "resnet12", "kwargs": kwargs}
    assert isinstance(loaded.method.backbone, ResNet12)
    assert any(isinstance(m, torch.nn.ReLU) for m in loaded.method.backbone.modules()) == (activation == "relu")
    exported = export_checkpoint(tmp_path / "run", tmp_path / "bundle", parity_episodes=10)
    assert exported.parity and all(p.passed and p.min_cosine > 0.9999 for p in exported.parity)
    assert exported.bundle.manifest["embedding_dim"] == 32
