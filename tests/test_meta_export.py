"""Optimisation-based methods end to end: train (tiny) -> evaluate -> export -> the device runs the learned loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import OMNIGLOT_ZIPS
from safetensors.numpy import load_file

from metaedge import checkpoint as ckpt
from metaedge.evaluate import evaluate_checkpoint
from metaedge.exporter import export_checkpoint
from metaedge.methods.head import adapt_head
from metaedge.runtime import Runtime
from metaedge.train import TrainConfig, train

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).resolve().parents[1] / "metaedge" / "reference" / "samples" / "Korean"


def tiny(algorithm: str, out) -> TrainConfig:
    return TrainConfig(data=[str(p) for p in OMNIGLOT_ZIPS], out=str(out), algorithm=algorithm, way=5, query=3,
                       episodes=30, width=16, val_every=30, val_episodes=20, meta_batch=2, inner_steps=3)  # fmt: skip


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "anil", "metasgd"])
def test_every_algorithm_trains_and_beats_chance_on_held_out_alphabets(algorithm, omniglot_zips, tmp_path):
    train(tiny(algorithm, tmp_path / algorithm))
    result = evaluate_checkpoint(tmp_path / algorithm, way=5, shot=1, query=3, episodes=60)
    assert result.accuracy > 0.35, result  # chance is 0.2


@pytest.fixture(scope="module")
def metasgd_bundle(tmp_path_factory):
    if not all(p.is_file() for p in OMNIGLOT_ZIPS):
        pytest.skip("the shared Omniglot data is not available")
    root = tmp_path_factory.mktemp("metasgd")
    train(tiny("metasgd", root / "run"))
    return root / "run", export_checkpoint(root / "run", root / "bundle", parity_episodes=20).bundle


def test_export_writes_the_learned_inner_loop(metasgd_bundle):
    run, bundle = metasgd_bundle
    adapt = bundle.manifest["adaptation"]
    method = ckpt.load(run).method
    assert adapt["learned"] is True and adapt["steps"] == 3 and adapt["normalize_features"] is True
    sizes = load_file(str(bundle.file(adapt["step_sizes_file"])))
    np.testing.assert_allclose(sizes["lr_weight"], method.lr_weight.detach().numpy())
    np.testing.assert_allclose(sizes["lr_bias"], [method.lr_bias.item()])


def test_device_head_equals_the_pytorch_inner_loop(metasgd_bundle):
    run, bundle = metasgd_bundle
    method = ckpt.load(run).method
    paths = {n: sorted((SAMPLES / f"character{n:02d}").glob("*.png"))[:3] for n in (1, 2, 3)}
    with Runtime(bundle.path) as rt:
        for n, p in paths.items():
            rt.enroll(f"c{n}", p)
        query = sorted((SAMPLES / "character02").glob("*.png"))[10:14]
        device = rt.classify(query, adapt=True, top_k=3, threshold=None)
        _, weight, bias = rt._head_cache
        z = rt._head_input(np.concatenate([rt.gallery.embeddings(f"c{n}") for n in (1, 2, 3)]))
    x, y = torch.from_numpy(z), torch.arange(3).repeat_interleave(3)
    w, b = adapt_head(x, y, 3, method.inner_steps, method.lr_weight.detach(), method.lr_bias.detach(),
                      method.weight_decay, create_graph=False)  # fmt: skip
    np.testing.assert_allclose(weight, w.detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(bias, b.detach().numpy(), atol=1e-4)
    assert all(len(p.top_k) == 3 for p in device)
