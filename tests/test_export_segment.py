"""Export of a segmentation checkpoint to a localisation bundle (metaedge/export_segment.py), on a tiny model
trained here in seconds and on real generated scenes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from metaedge import bundle as bundle_io
from metaedge import checkpoint as ckpt
from metaedge.evaluate_segment import held_out_glyphs
from metaedge.export_segment import check_parity, parity_scenes
from metaedge.exporter import ExportError, export_checkpoint
from metaedge.locate import Locator
from metaedge.onnx_clean import exporter_metadata
from metaedge.ort import create_session


def test_manifest_describes_a_locate_bundle(tiny_locate_bundle, tiny_seg_run):
    b = bundle_io.load(tiny_locate_bundle)
    m = b.manifest
    assert m["task"] == "locate"
    loc = m["locate"]
    assert loc["stride"] == 4 and loc["mask_threshold"] == 0.3 and loc["scene_size"] == 96
    assert set(m["files"]) == {"prototype.onnx", "dense.onnx", "decoder.onnx", "verify.json"}
    assert m["backbone"]["file"] == "prototype.onnx" and m["preprocess"]["size"] == 32
    assert m["embedding_dim"] == 8  # width 4 -> 2 * width
    cal = loc["open_set"]
    # the threshold keeps 95% of the scenes holding the target; the rate on scenes without it is measured
    assert cal["threshold"] == loc["threshold"] and abs(cal["true_positive_rate"] - 0.95) <= 0.01
    assert 0.0 <= cal["false_positive_rate"] <= 1.0 and cal["scenes_absent"] == cal["scenes_present"] > 0
    assert cal["source"]["part"] == "val"
    # the decode floor keeps 99% of the accepted scenes holding the target; what it lets through is measured
    assert loc["decode_floor"] == cal["decode_floor"] and cal["decode_keep"] == 0.99
    assert cal["true_positive_rate"] - 0.02 <= cal["true_positive_rate_decoded"] <= cal["true_positive_rate"]
    assert 0.0 <= cal["decoded_absent"] <= 1.0
    report = json.loads((tiny_locate_bundle / "verify.json").read_text())["reports"][0]
    assert report["passed"] and report["images"] == 200 and report["agreement"] >= 0.99
    assert abs(report["iou_onnx"] - report["iou_torch"]) < 1e-3
    for name in ("prototype.onnx", "dense.onnx", "decoder.onnx"):  # no stack traces naming this machine
        assert exporter_metadata(onnx.load(str(tiny_locate_bundle / name))) == []


def test_dense_graph_takes_any_multiple_of_the_stride(tiny_locate_bundle, tiny_seg_run):
    method = ckpt.load(tiny_seg_run).method.eval()
    session = create_session(tiny_locate_bundle / "dense.onnx")
    x = np.random.default_rng(0).random((1, 3, 100, 124), dtype=np.float32)
    out = session.run(None, {"scenes": x})[0]
    with torch.no_grad():
        expected = method.dense(torch.from_numpy(x)).numpy()
    assert out.shape == (1, 8, 25, 31) and np.abs(out - expected).max() < 1e-4


def test_parity_check_catches_a_wrong_graph(tiny_locate_bundle, tiny_seg_run):
    loaded = ckpt.load(tiny_seg_run)
    method = loaded.method.eval()
    b = bundle_io.load(tiny_locate_bundle)
    locator = Locator(b.file("dense.onnx"), b.file("decoder.onnx"), b.manifest["locate"])
    protos = create_session(b.file("prototype.onnx"))
    scenes = parity_scenes(held_out_glyphs(loaded.meta, "x", None, None), 3)
    assert check_parity(method, locator, protos, scenes, "fp32").passed
    with torch.no_grad():  # the PyTorch side changed after export: the device would answer differently
        method.decoder.to_pixels.bias += 3.0
    report = check_parity(method, locator, protos, scenes, "fp32")
    assert not report.passed and any("probability" in f for f in report.failures)


def test_int8_dense_graph_holds_its_tolerance(tiny_seg_run, tmp_path):
    result = export_checkpoint(tiny_seg_run, tmp_path / "b8", int8=True)
    (report,) = result.parity
    assert report.precision == "int8" and report.passed and report.agreement >= 0.95
    m = result.bundle.manifest
    assert m["locate"]["precision"] == "int8" and m["model_id"].endswith("-int8")
    assert m["locate"]["quantization"]["precision"] == "int8"


def test_classification_options_are_refused(tiny_seg_run, tmp_path):
    with pytest.raises(ExportError, match="--verify-data"):
        export_checkpoint(tiny_seg_run, tmp_path / "b", verify_data=["x"])
    assert not (tmp_path / "b").exists()
