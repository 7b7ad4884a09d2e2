"""metaedge/quantize.py on hand-made ONNX graphs: seconds, no training (mutation testing runs this file).

tests/test_parity_gates.py and tests/test_quantize_backbones.py quantize trained or real networks and run the
int8 gate on them; these pin the module's own parts: what quantize_int8 records, how op_counts tells 8-bit from
float nodes, the input-rounding probe on a graph that ignores rounding and one that magnifies it, the diagnosis
at its threshold, and the calibration sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from metaedge import quantize
from metaedge.errors import MetaedgeError
from metaedge.ort import create_session, run_batched
from metaedge.parity import TOLERANCES


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path, monkeypatch):
    """A path turned into "None" would otherwise read a file "None" that an earlier test left in the working
    directory (as mutants that swap a path for None do), and pass."""
    monkeypatch.chdir(tmp_path)


def save(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def image_input(channels: int = 1, size: int = 8):
    return helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", channels, size, size])


def tiny_backbone(path: Path) -> Path:
    """images (N, 1, 8, 8) -> Conv, Relu, MaxPool, Conv, HardSigmoid, GlobalAveragePool, Flatten -> (N, 4)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(scale=0.3, size=(4, 4, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("HardSigmoid", ["c2"], ["h"]),  # no integer kernel: runs float between Dequantize/Quantize
        helper.make_node("GlobalAveragePool", ["h"], ["g"]),
        helper.make_node("Flatten", ["g"], ["embeddings"]),
    ]
    out = helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", 4])
    return save(path, nodes, [image_input()], [out], [w1, w2])


def images(n: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 1, 8, 8)).astype(np.float32)


def test_quantize_int8_writes_an_int8_graph_and_records_what_it_did(tmp_path):
    source = tiny_backbone(tmp_path / "float.onnx")
    x = images(40)
    record = quantize.quantize_int8(source, tmp_path / "int8.onnx", x, "images")
    assert record["precision"] == "int8" and record["method"] == quantize.METHOD
    assert record["calibration_images"] == 40
    assert record["quantized_ops"]["QLinearConv"] == 2 and record["quantized_ops"]["MaxPool"] == 1
    assert record["float_ops"]["HardSigmoid"] == 1
    # weights int8 with one scale per output channel, activations uint8 (what METHOD says)
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "QLinearConv"]
    assert [inits[n.input[3]].dtype for n in convs] == [np.int8, np.int8]  # w
    assert [inits[n.input[4]].shape for n in convs] == [(4,), (4,)]  # w_scale: per channel
    assert {inits[n.input[2]].dtype for n in convs} == {np.dtype(np.uint8)}  # x_zero_point: uint8 activations
    probe = record["input_rounding"]
    assert probe["images"] == 40 and 0.99 < probe["min_cosine"] <= 1.0
    spread = record["embedding_spread"]
    z = run_batched(create_session(source), x)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    expected = np.median([z[i] @ z[j] for i in range(len(z)) for j in range(i + 1, len(z))])
    assert spread["images"] == 40 and spread["median_pairwise_cosine"] == pytest.approx(expected, abs=1e-6)
    # the int8 graph runs and stays close to the float one on the calibration images
    a = run_batched(create_session(source), x)
    b = run_batched(create_session(tmp_path / "int8.onnx"), x)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert a.shape == b.shape == (40, 4) and cos.min() > 0.95 and not np.array_equal(a, b)


def test_the_probe_reads_at_most_its_share_of_the_calibration_images(tmp_path):
    source = tiny_backbone(tmp_path / "float.onnx")
    record = quantize.quantize_int8(source, tmp_path / "int8.onnx", images(quantize.PROBE_IMAGES + 6), "images")
    assert record["calibration_images"] == quantize.PROBE_IMAGES + 6
    assert record["input_rounding"]["images"] == quantize.PROBE_IMAGES
    assert record["embedding_spread"]["images"] == quantize.PROBE_IMAGES


def test_quantize_int8_refuses_no_images_and_names_a_graph_it_cannot_read(tmp_path):
    source = tiny_backbone(tmp_path / "float.onnx")
    with pytest.raises(MetaedgeError, match="^int8 calibration needs at least one image$"):
        quantize.quantize_int8(source, tmp_path / "int8.onnx", images(0), "images")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx graph")
    with pytest.raises(MetaedgeError, match="^int8 quantization of broken.onnx failed: "):
        quantize.quantize_int8(broken, tmp_path / "int8.onnx", images(4), "images")
    assert not (tmp_path / "int8.onnx").exists()


def test_op_counts_follows_8_bit_data_through_the_graph(tmp_path):
    """Counted from the graph alone: a node is 8-bit where its data input is (it is never run here)."""
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("MaxPool", ["q"], ["m"], kernel_shape=[2, 2]),  # on 8-bit data: stays 8-bit
        helper.make_node("Reshape", ["m", "shape"], ["r"]),  # still 8-bit
        helper.make_node("QLinearConv", ["r", "s", "z", "w", "s", "z", "s", "z"], ["c"]),
        helper.make_node("DequantizeLinear", ["c", "s", "z"], ["d"]),  # counted in neither
        helper.make_node("HardSigmoid", ["d"], ["h"]),  # float
        helper.make_node("DynamicQuantizeLinear", ["h"], ["dq", "ds", "dz"]),
        helper.make_node("ConvInteger", ["dq", "w"], ["ci"]),  # integer kernel, int32 out
        helper.make_node("Cast", ["ci"], ["f"], to=TensorProto.FLOAT),  # int32 is not 8-bit data: float
        helper.make_node("Relu", ["f"], ["y"]),
        # integer kernels fed straight from an 8-bit graph input: integer by their type, not by their input
        helper.make_node("QLinearMatMul", ["u", "s", "z", "w", "s", "z", "s", "z"], ["qm"]),
        helper.make_node("MatMulInteger", ["u", "w"], ["mi"]),
    ]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    u8 = helper.make_tensor_value_info("u", TensorProto.UINT8, [1, 4])
    path = save(tmp_path / "g.onnx", nodes, [value, u8], [out])
    quantized, left = quantize.op_counts(path)
    assert quantized == {"ConvInteger": 1, "MatMulInteger": 1, "MaxPool": 1, "QLinearConv": 1, "QLinearMatMul": 1,
                         "Reshape": 1}  # fmt: skip
    assert left == {"Cast": 1, "HardSigmoid": 1, "Relu": 1}
    assert list(quantized) == sorted(quantized) and list(left) == sorted(left)


def graph_of(tmp_path: Path, name: str, nodes, initializers=()) -> Path:
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return save(tmp_path / name, nodes, [image_input()], [out], initializers)


def rounding(source: Path, x: np.ndarray) -> float:
    return quantize.probe(source, x)["input_rounding"]["min_cosine"]


def spread(source: Path, x: np.ndarray) -> float:
    return quantize.probe(source, x)["embedding_spread"]["median_pairwise_cosine"]


def test_input_rounding_probe_tells_a_robust_graph_from_a_sensitive_one(tmp_path):
    x = images(16)
    identity = graph_of(tmp_path, "id.onnx", [helper.make_node("Flatten", ["images"], ["y"])])
    robust = rounding(identity, x)
    # 8-bit rounding of values in [-1, 1] moves each by at most 1/255: the direction barely moves, but it moves
    assert 0.9999 < robust < 1.0
    # sin(1000 x): a step of 1/255 in x turns the output around
    k = numpy_helper.from_array(np.array(1000.0, np.float32), "k")
    sensitive = graph_of(tmp_path, "sin.onnx", [helper.make_node("Mul", ["images", "k"], ["m"]),
                                                helper.make_node("Sin", ["m"], ["s"]),
                                                helper.make_node("Flatten", ["s"], ["y"])], [k])  # fmt: skip
    assert rounding(sensitive, x) < 0.5
    # one value everywhere: nothing to round
    assert rounding(sensitive, np.full((3, 1, 8, 8), 0.25, np.float32)) == 1.0


def test_input_rounding_probe_compares_feature_maps_per_image(tmp_path):
    """A dense graph (locate's) gives (N, D, h, w): compared flattened, one cosine per image."""
    x = images(5)
    x[2] *= 0.0  # all-zero image: its outputs are zero vectors, cosine 0 by the norm guard, not NaN
    x[2, 0, 0, 0] = 1.0
    identity = graph_of(tmp_path, "map.onnx", [helper.make_node("Identity", ["images"], ["y"])])
    assert 0.999 < rounding(identity, x) < 1.0


def test_input_rounding_probe_takes_an_image_mapped_to_zero_both_ways_as_unmoved(tmp_path):
    """As the parity gate does (parity.row_cosines): a ReLU graph that leaves an image nothing, rounded or not,
    has not moved; a cosine of 0 there would blame the network's sensitivity for a dead embedding."""
    x = images(8)
    x[3] = -1.0  # Relu of it: all zero, rounded or not
    relu = graph_of(tmp_path, "relu.onnx", [helper.make_node("Relu", ["images"], ["r"]),
                                           helper.make_node("Flatten", ["r"], ["y"])])  # fmt: skip
    assert 0.9999 < rounding(relu, x) <= 1.0
    record = quantize.probe(relu, x)
    assert record["input_rounding"]["images"] == record["embedding_spread"]["images"] == 8


@pytest.mark.parametrize("cosine, diagnosed", [(1.0, False), (0.9985, False), (0.9975, True), (0.2, True)])
def test_diagnosis_fires_past_a_tenth_of_the_int8_cosine_budget(cosine, diagnosed):
    budget = 1.0 - TOLERANCES["int8"]["min_cosine"]
    assert quantize.PROBE_SHARE * budget == pytest.approx(0.002)  # the boundary the cases sit around
    why = quantize.diagnosis({"input_rounding": {"images": 64, "min_cosine": cosine}})
    assert (why is not None) == diagnosed
    if diagnosed:
        share = f"{(1.0 - cosine) / budget:.0%}"
        assert why.startswith("this network is too sensitive for int8: rounding only its input")
        assert f"min cosine {cosine:.4f} on 64 calibration images, {share} of the int8 cosine budget" in why
        assert why.endswith("export it in fp32")
    assert quantize.diagnosis(None) is None and quantize.diagnosis({"precision": "int8"}) is None


def test_median_pairwise_cosine_tells_spread_embeddings_from_nearly_parallel_ones(tmp_path):
    x = images(30)
    identity = graph_of(tmp_path, "identity.onnx", [helper.make_node("Identity", ["images"], ["y"])])
    assert abs(spread(identity, x)) < 0.2  # independent uniform(-1, 1) images
    offset = helper.make_tensor("offset", TensorProto.FLOAT, [], [50.0])
    shifted = graph_of(tmp_path, "shifted.onnx", [helper.make_node("Add", ["images", "offset"], ["y"])], [offset])
    assert spread(shifted, x) > 0.999  # every image plus the same large vector
    # the median of the pairs, not of the images: three pairs, cosines 1, 0 and 0
    pair = np.zeros((3, 1, 8, 8), np.float32)
    pair[0, 0, 0, 0] = pair[1, 0, 0, 0] = pair[2, 0, 0, 1] = 1.0
    assert spread(identity, pair) == 0.0
    assert spread(identity, x[:1]) == 0.0


AGREEMENT = "few-shot prediction agreement 0.8900 < 0.95"


@pytest.mark.parametrize("spread, failures, diagnosed", [
    (0.9998, [AGREEMENT], True), (quantize.SPREAD_LIMIT, [AGREEMENT], True), (0.985, [AGREEMENT], False),
    (0.9998, ["min cosine similarity 0.951000 < 0.98"], False), (0.9998, None, False),
])  # fmt: skip
def test_diagnosis_names_nearly_parallel_embeddings_when_agreement_failed(spread, failures, diagnosed):
    record = {"input_rounding": {"images": 64, "min_cosine": 0.99999},
              "embedding_spread": {"images": 64, "median_pairwise_cosine": spread}}  # fmt: skip
    why = quantize.diagnosis(record, failures)
    assert (why is not None) == diagnosed
    if diagnosed:
        assert why.startswith(f"this network's embeddings are nearly parallel (median cosine {spread:.4f} between "
                              "two of 64 calibration images)")  # fmt: skip
        assert why.endswith("or export it in fp32")


def test_diagnosis_gives_input_sensitivity_first():
    record = {"input_rounding": {"images": 64, "min_cosine": 0.9},
              "embedding_spread": {"images": 64, "median_pairwise_cosine": 0.9999}}  # fmt: skip
    assert quantize.diagnosis(record, [AGREEMENT]).startswith("this network is too sensitive for int8")


def test_calibration_sample_is_fixed_ordered_and_at_most_count():
    pixels = np.arange(100)[:, None]
    assert quantize.calibration_sample(pixels, count=100) is pixels  # not more than there is: all of it
    a = quantize.calibration_sample(pixels, count=90)  # 90 of 100 drawn with replacement would repeat some
    assert len(a) == 90 and np.all(np.diff(a[:, 0]) > 0)  # in their original order, no repeats
    assert np.array_equal(a, quantize.calibration_sample(pixels, count=90))  # seeded
    assert not np.array_equal(a, quantize.calibration_sample(pixels, count=90, seed=1))
    assert len(quantize.calibration_sample(np.arange(3000)[:, None])) == quantize.CALIBRATION_IMAGES == 2048
