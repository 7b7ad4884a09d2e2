"""Conv4 and its deeper variants: the map ends at 1x1 for the matching input size, and checkpoints keep the depth."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from metaedge import checkpoint as ckpt
from metaedge.cli import app
from metaedge.models import Conv4
from metaedge.train import TrainConfig, train


@pytest.mark.parametrize(("depth", "size"), [(4, 28), (5, 56)])
def test_each_block_halves_the_side_down_to_one_pixel(depth, size):
    net = Conv4(width=8, depth=depth).eval()
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        assert net.features(x).shape == (2, 8, 1, 1)
        assert net(x).shape == (2, 8)
    assert len(net.features) == depth


def test_depth_below_one_is_refused():
    with pytest.raises(ValueError, match="width and depth must be at least 1"):
        Conv4(depth=0)


@pytest.mark.parametrize("option", [["--depth", "0"], ["--width", "0"]])
def test_a_backbone_that_cannot_be_built_is_one_line_and_exit_1(omniglot_zips, tmp_path, option):
    result = CliRunner().invoke(app, ["train", "--data", str(omniglot_zips[0]), "--out", str(tmp_path / "r"),
                                      "--episodes", "1", *option])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "backbone 'conv4' cannot be built" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r" / ckpt.LAST).exists()


@pytest.mark.slow
def test_a_deeper_run_stores_its_depth_and_loads_back_the_same_network(omniglot_zips, tmp_path):
    common = dict(data=[str(p) for p in omniglot_zips], way=5, query=2, episodes=2, val_every=2, val_episodes=2,
                  width=8, val_groups=1, seed=0)  # fmt: skip
    train(TrainConfig(out=str(tmp_path / "deep"), depth=5, image_size=56, **common))
    train(TrainConfig(out=str(tmp_path / "plain"), **common))
    deep = ckpt.load(tmp_path / "deep")
    assert deep.meta["backbone"]["kwargs"]["depth"] == 5 and deep.preprocess.size == 56
    assert len(deep.method.backbone.features) == 5
    # The default depth is not written, so checkpoints made before depth existed read the same.
    assert "depth" not in ckpt.load(tmp_path / "plain").meta["backbone"]["kwargs"]
