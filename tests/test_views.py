"""Test-time views: identity first, deterministic, inside the exported graph, and part of the model id."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metaedge import checkpoint as ckpt
from metaedge.evaluate import embed_all, evaluate_checkpoint
from metaedge.exporter import export_checkpoint
from metaedge.models import Conv4
from metaedge.models.views import MAX_VIEWS, TestTimeViews, check_views
from metaedge.ort import create_session, run_batched


def test_one_view_is_the_backbone_and_the_first_view_is_the_identity():
    torch.manual_seed(0)
    net = Conv4(width=8).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(TestTimeViews(1, 28)(net, x), net(x))
        warped = torch.nn.functional.grid_sample(x, TestTimeViews(2, 28).grid[:1].expand(3, 28, 28, 2),
                                                 align_corners=False)  # fmt: skip
    torch.testing.assert_close(warped, x, atol=1e-5, rtol=0)  # grid coordinates round-trip in float32


@pytest.mark.parametrize("size", [28, 56])
def test_each_view_resamples_as_grid_sample_does(size):
    """Shifts and zooms are two small matrix products, not GridSample: the same bilinear, border-padded
    sampling of the view's affine map, to float32 rounding (grid_sample's own identity is off by ~3e-6)."""
    views = TestTimeViews(MAX_VIEWS, size)
    x = torch.rand(4, 3, size, size)
    for v in range(MAX_VIEWS):
        want = torch.nn.functional.grid_sample(x, views.grid[v : v + 1].expand(4, size, size, 2),
                                               padding_mode="border", align_corners=False)  # fmt: skip
        torch.testing.assert_close(views.warp(x)[4 * v : 4 * v + 4], want, atol=2e-5, rtol=0)
    torch.testing.assert_close(views.warp(x)[:4], x, atol=0, rtol=0)  # the identity view is the image itself


def test_views_average_per_image_independently_of_the_batch():
    torch.manual_seed(0)
    net = Conv4(width=8).eval()
    views = TestTimeViews(MAX_VIEWS, 28)
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        batch = views(net, x)
        alone = torch.cat([views(net, x[i : i + 1]) for i in range(5)])
        assert not torch.allclose(batch, net(x), atol=1e-4)
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)  # inductive: no image affects another


@pytest.mark.parametrize("bad", [0, MAX_VIEWS + 1])
def test_out_of_range_counts_are_refused(bad):
    with pytest.raises(ValueError, match="views must be between"):
        check_views(bad)


@pytest.mark.slow
def test_exported_views_match_pytorch_and_change_the_model_id(tiny_run_dir, tmp_path):
    result = export_checkpoint(tiny_run_dir, tmp_path / "b", parity_episodes=20, views=5)
    manifest = json.loads((result.bundle.path / "manifest.json").read_text())
    import onnx

    ops = {n.op_type for n in onnx.load(str(result.bundle.onnx_path)).graph.node}
    assert "GridSample" not in ops and "Einsum" in ops  # five views: shifts only, no sampling grid
    plain = export_checkpoint(tiny_run_dir, tmp_path / "plain", parity_episodes=20)
    assert manifest["backbone"]["views"] == 5 and result.bundle.model_id == plain.bundle.model_id + "-v5"
    loaded = ckpt.load(tiny_run_dir)
    loaded.set_views(5)
    from metaedge.data import open_dataset

    data = open_dataset(loaded.meta["data"]["roots"]).subset(loaded.meta["split"]["test"][:1]).load(loaded.preprocess)
    reference = embed_all(loaded.method, data)[:40]
    out = run_batched(create_session(result.bundle.onnx_path), loaded.preprocess.normalize(data.pixels[:40]))
    np.testing.assert_allclose(out, reference, atol=1e-4, rtol=1e-4)
    kw = dict(way=5, shot=1, query=2, episodes=30, seed=1)
    assert evaluate_checkpoint(tiny_run_dir, views=5, **kw).accuracy == pytest.approx(
        evaluate_checkpoint(result.bundle.path, **kw).accuracy, abs=0.01
    )
    with pytest.raises(Exception, match="fixed at export"):
        evaluate_checkpoint(result.bundle.path, views=3, **kw)


@pytest.mark.slow
def test_enroll_views_make_a_second_graph_the_runtime_enrolls_through(tiny_run_dir, tmp_path):
    from metaedge import bundle as bundle_io
    from metaedge.data import open_dataset
    from metaedge.runtime import Runtime

    result = export_checkpoint(tiny_run_dir, tmp_path / "b", parity_episodes=20, enroll_views=5)
    plain = export_checkpoint(tiny_run_dir, tmp_path / "plain", parity_episodes=20)
    manifest = result.bundle.manifest
    assert manifest["backbone"]["views"] == 1 and manifest["backbone"]["enroll"] == {"file": "enroll.onnx", "views": 5}
    assert plain.bundle.manifest["backbone"]["enroll"] is None and not plain.bundle.has_enroll_graph
    assert result.bundle.model_id == plain.bundle.model_id + "-e5"  # a gallery of one must not open in the other
    assert [r.backend for r in result.parity] == ["onnxruntime-cpu", "onnxruntime-cpu (enroll)"]
    assert all(r.passed for r in result.parity)

    loaded = ckpt.load(tiny_run_dir)
    data = open_dataset(loaded.meta["data"]["roots"]).subset(loaded.meta["split"]["test"][:1]).load(loaded.preprocess)
    pixels = loaded.preprocess.normalize(data.pixels[:12])
    queries = run_batched(create_session(result.bundle.onnx_path), pixels)
    support = run_batched(create_session(result.bundle.enroll_onnx_path), pixels)
    np.testing.assert_allclose(queries, embed_all(loaded.method, data)[:12], atol=1e-4, rtol=1e-4)
    loaded.set_enroll_views(5)
    np.testing.assert_allclose(support, embed_all(loaded.method, data, support=True)[:12], atol=1e-4, rtol=1e-4)
    assert not np.allclose(support, queries, atol=1e-3)

    # The runtime stores what the enrollment graph computes, and classifies through the query graph.
    images = [p[0] for p in data.pixels[:3]]  # (S, S) arrays, as a camera frame would come
    with Runtime(result.bundle.path) as rt:
        rt.enroll("a", images)
        np.testing.assert_allclose(rt.gallery.embeddings("a"), support[:3], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(rt.embed(images), queries[:3], atol=1e-4, rtol=1e-4)

    # Evaluating the bundle (ORT, both graphs) measures what evaluating the checkpoint with enroll views does.
    kw = dict(way=5, shot=1, query=2, episodes=30, seed=1)
    assert evaluate_checkpoint(tiny_run_dir, enroll_views=5, **kw).accuracy == pytest.approx(
        evaluate_checkpoint(result.bundle.path, **kw).accuracy, abs=0.01
    )
    with pytest.raises(Exception, match="fixed at export"):
        evaluate_checkpoint(result.bundle.path, enroll_views=3, **kw)

    # The enrollment graph is hashed like every bundle file: a tampered one is refused.
    graph = result.bundle.enroll_onnx_path
    graph.write_bytes(graph.read_bytes()[:-10])
    with pytest.raises(bundle_io.BundleError, match="enroll.onnx"):
        bundle_io.load(result.bundle.path)


def test_enroll_views_are_refused_for_methods_that_adapt_the_backbone(tmp_path):
    from metaedge.errors import CheckpointError
    from metaedge.methods import create_method

    maml = ckpt.Checkpoint(create_method("maml", Conv4(width=8)), {"algorithm": {"name": "maml"},
                           "preprocess": {"size": 28}}, tmp_path / "x")  # fmt: skip
    with pytest.raises(CheckpointError, match="enrollment views need a method"):
        maml.set_enroll_views(3)
