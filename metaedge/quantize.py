"""int8 backbones for ONNX Runtime on CPUs: static quantization, calibrated on real images.

ONNX Runtime's own quantizer (`onnxruntime.quantization`) does the work: weights int8 per output channel,
activations uint8 with ranges measured on calibration images, in the "QOperator" form (QLinearConv and
friends), which ONNX Runtime's CPU provider runs with integer kernels (VNNI on x86, dot-product on ARM).
On the 2-core dev VM the shipped ensemble's backbone ran about 2x faster this way, and the within-alphabet
20-way 1-shot accuracy moved by 0.03 points (95.06 -> 95.03%, 1000 episodes): BENCHMARKS.md, issue 7.

Some of those operators are ONNX Runtime's own (com.microsoft domain), so the graph is for ONNX Runtime's
CPU provider only; GPU boards get int8 from TensorRT instead (`--format tensorrt --int8`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from metaedge.errors import MetaedgeError

CALIBRATION_IMAGES = 512  # ranges stop moving well before this on Omniglot-sized inputs
CALIBRATION_BATCH = 64
METHOD = "onnxruntime static quantization, QOperator, int8 weights per channel, uint8 activations, MinMax ranges"


def quantize_int8(source: Path, out: Path, images: np.ndarray, input_name: str) -> dict:
    """Quantize the float graph `source` into `out`; images: float32 (N, C, S, S), preprocessed as the device does.

    Returns what the manifest records about it.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(images) == 0:
        raise MetaedgeError("int8 calibration needs at least one image")

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                {input_name: images[i : i + CALIBRATION_BATCH]} for i in range(0, len(images), CALIBRATION_BATCH)
            )

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="metaedge-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            # Shape inference and graph optimisation first, as ONNX Runtime recommends, so Conv+Relu fuse
            # before ranges are measured.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared), str(out), Batches(), quant_format=QuantFormat.QOperator, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )  # fmt: skip
        except Exception as e:  # the quantizer raises many types; all mean the same thing to the user
            raise MetaedgeError(f"int8 quantization of {source.name} failed: {e}") from None
    return {"precision": "int8", "method": METHOD, "calibration_images": int(len(images))}


def calibration_sample(pixels: np.ndarray, count: int = CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    """A fixed random sample of `count` images (all of them where there are fewer), in their original order."""
    if len(pixels) <= count:
        return pixels
    pick = np.sort(np.random.default_rng(seed).choice(len(pixels), count, replace=False))
    return pixels[pick]
