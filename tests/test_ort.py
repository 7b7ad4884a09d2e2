"""ONNX Runtime sessions: int8 arithmetic is exact on every x86 CPU, not only those with VNNI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from metaedge import ort


def saturating_conv(channels: int = 8) -> onnx.ModelProto:
    """One QLinearConv whose exact answer is 9 * channels, where 16-bit pair sums (255 * 127 * 2 > 32767) would give
    about half of it: inputs all 255 (real 1.0), weights all 127 (real 1.0), 3x3 kernel, output scale 1."""
    consts = {
        "x_scale": np.array(1 / 255, np.float32), "x_zero": np.array(0, np.uint8),
        "w": np.full((1, channels, 3, 3), 127, np.int8),
        "w_scale": np.array(1 / 127, np.float32), "w_zero": np.array(0, np.int8),
        "y_scale": np.array(1.0, np.float32), "y_zero": np.array(0, np.uint8),
    }  # fmt: skip
    conv = helper.make_node("QLinearConv", ["x", "x_scale", "x_zero", "w", "w_scale", "w_zero", "y_scale", "y_zero"],
                            ["y"])  # fmt: skip
    graph = helper.make_graph(
        [conv], "saturating_conv",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, channels, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 1, 1, 1])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("channels", [8, 28])
def test_int8_convolution_is_exact(channels, tmp_path):
    onnx.save(saturating_conv(channels), tmp_path / "conv.onnx")
    session = ort.create_session(tmp_path / "conv.onnx")
    y = session.run(None, {"x": np.full((1, channels, 3, 3), 255, np.uint8)})[0]
    assert int(y.item()) == 9 * channels


def test_sessions_ask_for_exact_int8(tmp_path):
    onnx.save(saturating_conv(), tmp_path / "conv.onnx")
    options = ort.create_session(tmp_path / "conv.onnx").get_session_options()
    assert options.get_session_config_entry("session.x64quantprecision") == "1"
