"""The export gates fire for real: wrong graphs and bad int8 calibrations are refused, each criterion on its own.

The graphs here are the tiny run's real ONNX export with one thing broken (a weight scaled or perturbed with the
onnx package, the input fed without Omniglot's inversion, an int8 graph calibrated on blank images), run by ONNX
Runtime. A gate that compared PyTorch with itself, or loosened the int8 tolerances, fails these tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from metaedge import checkpoint as ckpt
from metaedge import exporter, quantize
from metaedge.data import LoadedDataset
from metaedge.exporter import ExportError, export_checkpoint
from metaedge.ort import create_session, run_batched
from metaedge.parity import ParityError, ParityReport, check_parity

pytestmark = pytest.mark.slow

# Each failure message names its criterion; `failed` maps them back, so a test can say exactly which fired.
CRITERIA = {
    "max abs difference": "max_abs_diff",
    "min cosine similarity": "min_cosine",
    "few-shot prediction agreement": "min_agreement",
    "not finite": "finite",
}


def failed(report: ParityReport) -> set[str]:
    names = set()
    for message in report.failures:
        hits = {name for words, name in CRITERIA.items() if words in message}
        assert len(hits) == 1, f"failure names no single criterion: {message!r}"
        names |= hits
    return names


@dataclass
class Tiny:
    """The tiny run, its held-out images as the exporter verifies on, and its float graph."""

    loaded: ckpt.Checkpoint
    data: LoadedDataset
    pixels: np.ndarray  # float32 (N, 1, 28, 28), preprocessed as the device does
    graph: Path  # the float ONNX graph, as export_onnx writes it

    def embed(self, graph: Path, pixels: np.ndarray | None = None) -> np.ndarray:
        """ONNX Runtime embeddings of `pixels` (default: the verification images), float32 (N, D)."""
        return run_batched(create_session(graph), self.pixels if pixels is None else pixels)

    def parity(self, candidate: np.ndarray, precision: str) -> ParityReport:
        return check_parity(self.loaded.method, candidate, self.data, backend="onnxruntime-cpu", precision=precision)


@pytest.fixture(scope="module")
def tiny(tiny_run_dir, tmp_path_factory) -> Tiny:
    loaded = ckpt.load(tiny_run_dir)
    data = exporter.verification_data(loaded, None)
    graph = tmp_path_factory.mktemp("gates") / "backbone.onnx"
    exporter.export_onnx(loaded, graph)
    return Tiny(loaded, data, loaded.preprocess.normalize(data.pixels), graph)


def scale_conv(which: int, change: Callable[[np.ndarray], np.ndarray], bias: bool = True):
    """An edit of an ONNX model: the weight (and bias) of its `which`-th Conv node replaced by change(array)."""

    def edit(model: onnx.ModelProto) -> None:
        conv = [n for n in model.graph.node if n.op_type == "Conv"][which]
        inits = {i.name: i for i in model.graph.initializer}
        for name in conv.input[1:3] if bias else conv.input[1:2]:
            init = inits[name]
            init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init)).astype(np.float32), name))

    return edit


def edited(source: Path, out: Path, edit: Callable[[onnx.ModelProto], None]) -> Path:
    """A copy of the graph `source` at `out` with `edit` applied; it still passes onnx.checker."""
    model = onnx.load(str(source))
    edit(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))
    return out


# Conv4 ends conv -> ReLU -> max-pool -> spatial mean, all positively homogeneous: scaling the last convolution's
# weight and bias by 1.01 scales every embedding by exactly 1.01. Same directions, same decisions.
LAST_LAYER_TIMES_1_01 = scale_conv(-1, lambda a: a * 1.01)


def test_last_layer_scaled_fails_max_abs_diff_alone(tiny, tmp_path):
    report = tiny.parity(tiny.embed(edited(tiny.graph, tmp_path / "x.onnx", LAST_LAYER_TIMES_1_01)), "fp32")
    assert failed(report) == {"max_abs_diff"} and not report.passed
    assert report.max_abs_diff > 10 * report.tolerances["max_abs_diff"]
    assert report.min_cosine > 0.99999 and report.agreement == 1.0  # the other two could not have seen it


def test_one_image_preprocessed_wrongly_fails_min_cosine_alone(tiny):
    """One image fed without the inversion: its embedding points elsewhere, yet decisions barely move.

    Only the worst-image cosine sees it (a mean would not). The int8 tolerances, which judge direction and
    decisions only, isolate it; at fp32 the element-wise bound fires too, as it must for any turn the cosine bound
    sees: 1e-3 on embeddings of norm above 2 turns them by less than 0.99999 allows.
    """
    pixels = tiny.pixels.copy()
    pixels[0] = tiny.loaded.preprocess.normalize(255 - tiny.data.pixels[0])
    candidate = tiny.embed(tiny.graph, pixels)
    report = tiny.parity(candidate, "int8")
    assert failed(report) == {"min_cosine"} and report.min_cosine < 0.9
    assert report.agreement >= report.tolerances["min_agreement"]
    assert failed(tiny.parity(candidate, "fp32")) == {"max_abs_diff", "min_cosine"}


def test_first_layer_perturbed_fails_agreement_alone(tiny, tmp_path):
    """7% noise on the first convolution's weights: every embedding keeps its direction within the int8 cosine
    bound, yet the few-shot decisions change (the tiny model's classes are close together)."""
    rng = np.random.default_rng(0)
    noisy = scale_conv(0, lambda w: w * (1 + 0.07 * rng.standard_normal(w.shape)), bias=False)
    report = tiny.parity(tiny.embed(edited(tiny.graph, tmp_path / "x.onnx", noisy)), "int8")
    assert failed(report) == {"min_agreement"} and report.min_cosine >= report.tolerances["min_cosine"]
    assert report.agreement < 0.93


def test_preprocessing_mismatch_fails_every_criterion(tiny):
    """The device forgets to invert (white paper high, ink low): refused on all three counts."""
    uninverted = tiny.loaded.preprocess.normalize(255 - tiny.data.pixels)
    report = tiny.parity(tiny.embed(tiny.graph, uninverted), "fp32")
    assert failed(report) == {"max_abs_diff", "min_cosine", "min_agreement"}
    assert report.min_cosine < 0.9 and report.agreement < 0.8


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_embeddings_are_refused(tiny, value):
    """A graph that overflows on one image: NaN compares false, so a gate written `x < bound` passed it."""
    candidate = tiny.embed(tiny.graph)
    candidate[5] = value
    report = tiny.parity(candidate, "int8")
    assert not report.passed and "finite" in failed(report)
    assert f"1 of {len(candidate)} embeddings not finite" in report.failures[0]


def test_wrong_embedding_width_is_an_error(tiny):
    n, d = tiny.embed(tiny.graph).shape
    with pytest.raises(ParityError, match=rf"shape \({n}, {d - 1}\), PyTorch \({n}, {d}\)"):
        tiny.parity(tiny.embed(tiny.graph)[:, :-1], "fp32")


def wrong_export(monkeypatch, edit: Callable[[onnx.ModelProto], None], support_only: bool = False) -> None:
    """Make the exporter write a corrupted graph: the real export_onnx, then `edit` (on the enroll graph alone
    where `support_only`)."""
    real = exporter.export_onnx

    def export_onnx(checkpoint, path, opset=exporter.DEFAULT_OPSET, *, support=False):
        real(checkpoint, path, opset, support=support)
        if support or not support_only:
            edited(path, path, edit)

    monkeypatch.setattr(exporter, "export_onnx", export_onnx)


def test_export_refuses_a_scaled_weight_and_writes_nothing(tiny_run_dir, tmp_path, monkeypatch):
    wrong_export(monkeypatch, LAST_LAYER_TIMES_1_01)
    with pytest.raises(ExportError, match="parity check failed, nothing written") as refused:
        export_checkpoint(tiny_run_dir, tmp_path / "bundle", parity_episodes=20)
    message = str(refused.value)
    assert "onnxruntime-cpu (fp32): max abs difference" in message
    assert "cosine" not in message and "agreement" not in message and "accuracy" not in message
    assert list(tmp_path.iterdir()) == []


def test_export_checks_the_enroll_graph_too(tiny_run_dir, tmp_path, monkeypatch):
    """The query graph is right, the enrollment graph (3 views) has its first layer doubled: refused by name."""
    wrong_export(monkeypatch, scale_conv(0, lambda a: a * 2.0), support_only=True)
    with pytest.raises(ExportError, match=r"nothing written: onnxruntime-cpu \(enroll\) \(fp32\): ") as refused:
        export_checkpoint(tiny_run_dir, tmp_path / "bundle", parity_episodes=20, enroll_views=3)
    message = str(refused.value)
    assert all(words in message for words in ("max abs difference", "min cosine", "agreement"))
    assert re.search(r"accuracy on those episodes: reference \d+\.\d%, this graph \d+\.\d%", message)
    assert "onnxruntime-cpu (fp32)" not in message  # the query graph passed
    assert list(tmp_path.iterdir()) == []


# Blank paper (white, inverted to all zeros) and all-zero pixels (solid ink): ranges measured on them clip real
# drawings. All-ink calibration lands between the int8 bounds and 0.5 on both criteria, so loosening them shows.
BLANK = {"blank paper": 255, "all-zero pixels": 0}


def test_int8_tolerances_refuse_a_bad_calibration(tiny, tmp_path):
    spec = tiny.loaded.preprocess
    good = tmp_path / "good.onnx"
    quantize.quantize_int8(tiny.graph, good, spec.normalize(exporter.calibration_images(tiny.loaded, None)),
                           exporter.INPUT)  # fmt: skip
    assert tiny.parity(tiny.embed(good), "int8").passed  # the training images calibrate it well
    for name, value in BLANK.items():
        blank = np.full((64, spec.channels, spec.size, spec.size), value, np.uint8)
        path = tmp_path / f"{value}.onnx"
        quantize.quantize_int8(tiny.graph, path, spec.normalize(blank), exporter.INPUT)
        report = tiny.parity(tiny.embed(path), "int8")
        assert failed(report) == {"min_cosine", "min_agreement"}, name
        assert report.min_cosine < 0.97 and report.agreement < 0.9, name


def test_export_int8_calibrated_on_blank_images_is_refused_and_writes_nothing(tiny_run_dir, tmp_path):
    calib = tmp_path / "calib" / "blank"
    calib.mkdir(parents=True)
    for i in range(8):
        Image.new("1", (105, 105), 0).save(calib / f"{i}.png")  # Omniglot's own format, all ink
    with pytest.raises(ExportError, match="nothing written") as refused:
        export_checkpoint(tiny_run_dir, tmp_path / "bundle", int8=True, calibration_data=[str(tmp_path / "calib")],
                          parity_episodes=50)  # fmt: skip
    message = str(refused.value)
    assert "onnxruntime-cpu (int8): min cosine similarity" in message and "< 0.98" in message
    assert "few-shot prediction agreement" in message and "< 0.95" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib"]
