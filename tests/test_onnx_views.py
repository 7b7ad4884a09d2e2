"""Sampled test-time views rewritten as the exporter now writes them: same warps, no GridSample for shifts and zooms."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from metaedge import bundle as bundle_io
from metaedge.errors import MetaedgeError
from metaedge.models.views import TestTimeViews
from metaedge.onnx_views import ViewsError, find_sampled_views, separate_bundle_views, separate_views
from metaedge.ort import create_session
from metaedge.runtime import REFERENCE_BUNDLE


def sampled_views_graph(count: int, size: int, grid: np.ndarray | None = None) -> onnx.ModelProto:
    """What the exporter wrote before the separable form: images (B, 1, S, S) repeated view-major, one GridSample over
    a constant grid (V, 1, S, S, 2) expanded to the batch, then an 'embedding' (B, S*S): the views' mean image."""
    if grid is None:
        grid = TestTimeViews(count, size).grid.numpy()[:, None]
    consts = {
        "axis0": np.array([0], np.int64),
        "grid": grid.astype(np.float32),
        "one_s_s": np.array([1, size, size], np.int64),
        "s_s_2": np.array([size, size, 2], np.int64),
        "views": np.array([count], np.int64),
        "images_shape": np.array([-1, 1, size, size], np.int64),
        "grid_shape": np.array([-1, size, size, 2], np.int64),
        "per_view": np.array([count, -1, size * size], np.int64),
    }
    nodes = [
        helper.make_node("Shape", ["images"], ["batch"], start=0, end=1),
        helper.make_node("Unsqueeze", ["images", "axis0"], ["unsqueezed"]),
        helper.make_node("Concat", ["views", "batch", "one_s_s"], ["images_to"], axis=0),
        helper.make_node("Concat", ["views", "batch", "s_s_2"], ["grid_to"], axis=0),
        helper.make_node("Expand", ["unsqueezed", "images_to"], ["images_x"]),
        helper.make_node("Expand", ["grid", "grid_to"], ["grid_x"]),
        helper.make_node("Reshape", ["images_x", "images_shape"], ["images_v"]),
        helper.make_node("Reshape", ["grid_x", "grid_shape"], ["grid_v"]),
        helper.make_node("GridSample", ["images_v", "grid_v"], ["grid_sampler"], align_corners=0, mode="bilinear",
                         padding_mode="border"),  # fmt: skip
        helper.make_node("Reshape", ["grid_sampler", "per_view"], ["by_view"]),
        helper.make_node("ReduceMean", ["by_view", "axis0"], ["embeddings"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "sampled_views",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", size * size])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def run(model: onnx.ModelProto, images: np.ndarray, tmp_path: Path) -> np.ndarray:
    path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.onnx"
    onnx.save(model, path)
    return create_session(path, threads=1).run(None, {"images": images})[0]


@pytest.mark.parametrize("count", [3, 7])
def test_rewritten_views_warp_as_the_sampled_ones(count, tmp_path):
    size = 28
    old = sampled_views_graph(count, size)
    new, found = separate_views(old)
    assert (found.count, found.size) == (count, size)
    ops = [n.op_type for n in new.graph.node]
    # Views 5 and 6 are the rotations: only they keep a sampling grid.
    assert ops.count("GridSample") == (2 if count == 7 else 0)
    assert ops.count("Einsum") == {3: 2, 7: 4}[count]  # shifts: one product each (views 1-4); zooms: none below 8
    images = np.random.default_rng(1).random((4, 1, size, size), dtype=np.float32)
    before, after = run(old, images, tmp_path), run(new, images, tmp_path)
    np.testing.assert_allclose(after, before, atol=1e-5)
    # and both are what TestTimeViews itself computes (the mean warped image, flattened)
    expected = TestTimeViews(count, size).warp(torch.from_numpy(images)).reshape(count, 4, -1).mean(0).numpy()
    np.testing.assert_allclose(after, expected, atol=1e-5)


def test_zoom_views_are_products_on_both_axes(tmp_path):
    old = sampled_views_graph(9, 28)
    new, _ = separate_views(old)
    # 4 shifts (one axis each) + 2 zooms (both axes); the two rotations keep GridSample
    assert [n.op_type for n in new.graph.node].count("Einsum") == 4 + 2 * 2
    images = np.random.default_rng(2).random((3, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(run(new, images, tmp_path), run(old, images, tmp_path), atol=1e-5)


def test_a_graph_without_sampled_views_is_refused():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["embeddings"])], "plain",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", 1, 8, 8])],
    )  # fmt: skip
    with pytest.raises(ViewsError, match="expected one GridSample"):
        find_sampled_views(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_a_grid_that_is_not_metaedges_views_is_refused():
    grid = TestTimeViews(3, 16).grid.numpy()[:, None].copy()
    grid[1] *= 0.5  # a zoom metaedge never had
    with pytest.raises(ViewsError, match="not metaedge's first 3 views"):
        find_sampled_views(sampled_views_graph(3, 16, grid))


def _with_sampled_enroll_graph(bundle: Path, out: Path, views: int = 3) -> Path:
    """A copy of `bundle` whose enrollment graph is sampled_views_graph() at the bundle's input size."""
    loaded = bundle_io.load(bundle)
    size = loaded.manifest["backbone"]["input"]["shape"][2]
    work = out.parent / f"{out.name}-files"
    work.mkdir()
    onnx.save(sampled_views_graph(views, size), work / "enroll.onnx")
    files = {n: loaded.path / n for n in loaded.manifest["files"] if n != "enroll.onnx"}
    files["enroll.onnx"] = work / "enroll.onnx"
    manifest = {k: v for k, v in loaded.manifest.items() if k not in ("files", "digest")}
    manifest["backbone"] = {**manifest["backbone"], "enroll": {"file": "enroll.onnx", "views": views}}
    return bundle_io.write(out, manifest, files).path


def test_a_bundle_is_rewritten_in_place_and_still_verifies(tiny_bundle, tmp_path):
    path = _with_sampled_enroll_graph(tiny_bundle, tmp_path / "b")
    before = json.loads((path / "manifest.json").read_text())
    report = separate_bundle_views(path, check_images=8)
    assert (report.file, report.views) == ("enroll.onnx", 3)
    assert report.nodes[1] < report.nodes[0] and report.warp_max_diff < 1e-5 and report.min_cosine > 0.9999
    after = bundle_io.load(path)  # hashes and digest follow the new file
    assert after.model_id == before["model_id"]
    assert after.manifest["files"]["enroll.onnx"]["sha256"] != before["files"]["enroll.onnx"]["sha256"]
    assert {k: v for k, v in after.manifest.items() if k not in ("files", "digest")} == \
        {k: v for k, v in before.items() if k not in ("files", "digest")}  # fmt: skip
    assert "GridSample" not in {n.op_type for n in onnx.load(str(path / "enroll.onnx")).graph.node}
    # A second pass finds nothing to rewrite and leaves the bundle exactly as it is.
    snapshot = contents(path)
    with pytest.raises(ViewsError, match="enroll.onnx: expected one GridSample"):
        separate_bundle_views(path)
    assert contents(path) == snapshot


def test_a_bundle_with_unlisted_files_is_left_alone(tiny_bundle, tmp_path):
    path = _with_sampled_enroll_graph(tiny_bundle, tmp_path / "b")
    (path / "notes.txt").write_text("mine")
    snapshot = contents(path)
    with pytest.raises(MetaedgeError, match="notes.txt"):
        separate_bundle_views(path)
    assert contents(path) == snapshot


def test_a_tampered_bundle_is_refused_before_anything_is_rewritten(tiny_bundle, tmp_path):
    path = _with_sampled_enroll_graph(tiny_bundle, tmp_path / "b")
    with open(path / "enroll.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(bundle_io.BundleError, match="enroll.onnx has"):
        separate_bundle_views(path)


def test_shipped_enrollment_graphs_sample_no_shift_or_zoom():
    """The reference bundles enroll through 3 views (identity and two shifts): none of them needs GridSample."""
    for bundle in (REFERENCE_BUNDLE, REFERENCE_BUNDLE.parent / "ensemble"):
        loaded = bundle_io.load(bundle)
        assert loaded.manifest["backbone"]["enroll"]["views"] == 3
        ops = {n.op_type for n in onnx.load(str(loaded.enroll_onnx_path)).graph.node}
        assert "GridSample" not in ops and "Einsum" in ops, bundle


def test_the_script_rewrites_a_copy_of_a_sampled_bundle(tiny_bundle, tmp_path):
    import subprocess
    import sys

    path = _with_sampled_enroll_graph(tiny_bundle, tmp_path / "b")
    script = Path(__file__).resolve().parents[1] / "scripts" / "separable_views.py"
    done = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "3 views at" in done.stdout and "manifest hashes updated" in done.stdout
    again = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, check=False)
    assert again.returncode == 1 and "expected one GridSample" in again.stderr
    shutil.rmtree(path)
