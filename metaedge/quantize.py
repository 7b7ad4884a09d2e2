"""int8 backbones for ONNX Runtime on CPUs: static quantization, calibrated on real images.

ONNX Runtime's own quantizer (`onnxruntime.quantization`) does the work: weights int8 per output channel,
activations uint8 with ranges measured on calibration images, in the "QOperator" form (QLinearConv and
friends), which ONNX Runtime's CPU provider runs with integer kernels (VNNI on x86, dot-product on ARM).
On the 2-core dev VM the shipped ensemble's backbone ran about 2x faster this way, and the within-alphabet
20-way 1-shot accuracy moved by 0.03 points (95.06 -> 95.03%, 1000 episodes): BENCHMARKS.md, issue 7.

What stays float: every operator the QOperator quantizer has no integer kernel for (in MobileNetV3 and
EfficientNet: HardSwish, HardSigmoid, Sigmoid, ReduceMean) runs in float between a DequantizeLinear and a
QuantizeLinear. The policy is the graph's op types and nothing else (no model names); the manifest records which
op types were left float and how many nodes of each (`float_ops`), and which were quantized (`quantized_ops`).

Measured before settling on it (issue 18; torchvision MobileNetV3-Small at 224x224, batch-norm statistics set
from CIFAR photos, 360 calibration photos, parity on 120 held-out ones; min cosine / 4-way 1-shot agreement
with the float graph, int8 gate 0.98 / 0.95): MinMax QOperator 0.758 / 0.80; QDQ 0.758 / 0.80; only Conv
quantized (HardSwish, squeeze-excite Mul, pooling float) 0.62 / 0.77; Percentile 0.82 / 0.84; Entropy 0.75 /
0.80; reduce_range 0.78 / 0.80; symmetric int8 activations 0.26 / 0.69; depthwise convolutions float 0.79 /
0.82; first or last convolutions float: no better. Every one ran slower than fp32 at batch 8 on the dev VM, so
the simplest stays. Why none passes differs by network, and none of it is the calibration method:
- randomly initialised or barely trained networks amplify small perturbations layer after layer: that
  MobileNetV3 with nothing but its *input* rounded to the int8 graph's 8-bit grid already lands at min cosine
  0.981 (a timm MobileNetV3-Small meta-trained from scratch for 600 episodes: 0.976), where ResNet-18 and Conv4
  stay above 0.99996. `probe` measures this on every export, the manifest records it, and
  `diagnosis` gives it as the reason when the gate refuses;
- a MobileNetV3-Small trained 4 epochs as a CIFAR classifier (64x64) is not sensitive that way (0.9999998) but
  its embeddings are nearly parallel (median pairwise cosine 0.9998): int8 keeps their direction (min cosine
  0.9999) yet the few-shot decisions hang on the 2% that differs, and agreement stays at 0.89-0.92 under
  every setting above. `probe` measures this on every export too (`embedding_spread`), and
  `diagnosis` gives it as the reason when agreement is what failed;
- a timm MobileNetV3-Large after 3 episodes at 224x224 is neither (0.99999; pairwise cosine 0.76): its error
  grows block by block, signal-to-quantization-noise 39 dB after the stem, 20 dB at the embedding, and some
  images land far off (min cosine 0.51, agreement 0.61; QDQ or only Conv quantized: no better).
No pretrained MobileNetV3 could be measured here (nothing can be downloaded).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from metaedge.errors import MetaedgeError

# MinMax ranges are the extremes of the calibration images, so too small a sample clips the rarer, larger
# activations of photos it did not see. Measured (issue 18; a ResNet-18 pre-trained as a CIFAR classifier, then
# meta-trained; min cosine int8 vs float over 2400 held-out photos, three sampling seeds): 512 images 0.93 /
# 0.996 / 0.96 (two seeds below the int8 gate's 0.98), 1024 0.992 / 0.992 / 0.996, 2048 0.996 / 0.992 / 0.992, all
# 3600 training photos 0.996. The cost: wider ranges are coarser steps (a pre-trained MobileNetV3-Small, refused
# either way, agreed on 0.649 of answers at 2048 against 0.773 at 512), and one float pass over the images (the
# ResNet-18 at 32x32 quantized in 14 s at 2048 against 5 s at 512, one thread): scripts/int8_calibration_size.py.
CALIBRATION_IMAGES = 2048
CALIBRATION_BATCH = 64
METHOD = "onnxruntime static quantization, QOperator, int8 weights per channel, uint8 activations, MinMax ranges"
# The input-rounding probe runs the float graph twice over this many calibration images (seconds at 224x224).
PROBE_IMAGES = 64
# The input is one of dozens of tensors an int8 backbone rounds, each about as finely: where rounding it alone
# uses a tenth of the int8 gate's cosine budget, the whole graph cannot stay inside that budget.
PROBE_SHARE = 0.1
# Embeddings this close to parallel (median cosine between two images' float embeddings) leave few-shot decisions
# to the small part in which they differ, which int8 rounding moves: a MobileNetV3-Small trained 4 epochs as a
# CIFAR classifier sat at 0.9998 and kept min cosine 0.9999 through int8 yet agreed on 89-92% of answers. Networks
# that pass the gate sit lower (on 62 of the shipped Korean samples: the Omniglot ensemble's int8 graph 0.931, a
# ResNet-12 after 500 distilled episodes 0.967, whose int8 graph agreed on 99%); ReLU embeddings, all positive,
# are never far from parallel.
SPREAD_LIMIT = 0.99
# Integer kernels outside the QLinear* family (ONNX's, int32 out).
_INTEGER_OPS = {"ConvInteger", "MatMulInteger"}


def quantize_int8(source: Path, out: Path, images: np.ndarray, input_name: str) -> dict:
    """Quantize the float graph `source` into `out`; images: float32 (N, C, S, S), preprocessed as the device does.

    Returns what the manifest records about it: the method, the number of calibration images, the op types
    quantized and left float (node counts: `op_counts`), and `input_rounding` and `embedding_spread` (`probe`, on
    the first PROBE_IMAGES of them), which `diagnosis` reads.
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
    quantized, left_float = op_counts(out)
    return {"precision": "int8", "method": METHOD, "calibration_images": int(len(images)),
            "quantized_ops": quantized, "float_ops": left_float, **probe(source, images[:PROBE_IMAGES])}  # fmt: skip


def op_counts(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The quantized graph at `path` as ({op type run on 8-bit tensors: nodes}, {op type left float: nodes}).

    A node runs on 8-bit tensors where its data input does: the output of a QuantizeLinear, of an integer kernel
    (QLinearConv and friends), or of an op the quantizer kept on 8-bit data (MaxPool, Reshape). The
    QuantizeLinear/DequantizeLinear pairs themselves are counted in neither.
    """
    import onnx

    graph = onnx.load(str(path)).graph
    eight_bit: set[str] = set()
    quantized, left = Counter(), Counter()
    for node in graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "DequantizeLinear":
            continue
        if node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear"):
            eight_bit.update(node.output[:1])
            continue
        integer = node.op_type.startswith("QLinear") or node.op_type in _INTEGER_OPS or (
            bool(node.input) and node.input[0] in eight_bit)  # fmt: skip
        (quantized if integer else left)[node.op_type] += 1
        if integer and not node.op_type.endswith("Integer"):  # ConvInteger/MatMulInteger give int32
            eight_bit.update(node.output[:1])
    return dict(sorted(quantized.items())), dict(sorted(left.items()))


def probe(source: Path, images: np.ndarray) -> dict:
    """The two figures `diagnosis` reads, from one session of the float graph `source` and one pass of it over
    `images` (float32 (N, C, S, S), preprocessed) plus one over them rounded; the graph's outputs, (N, D) or a
    feature map (N, D, h, w) (locate's dense graph), are compared flattened per image. Returns the manifest's
    entries:

    input_rounding: how far the float graph moves when only its input is rounded as the int8 graph rounds it:
    each image is rounded to the uint8 grid ONNX Runtime's MinMax calibration gives the input over these images
    (the range widened to hold zero); min_cosine is the smallest cosine between an image's two outputs (1.0: no
    image moved). A graph that lands far below 1 here cannot be quantized inside the int8 gate.
    embedding_spread: median_pairwise_cosine, the median cosine between the outputs of two different images
    (0.0 with fewer than two). Near 1: every image lands in almost the same direction.
    """
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    from metaedge.ort import create_session, run_batched
    from metaedge.parity import row_cosines

    session = create_session(source)
    a = run_batched(session, images).reshape(len(images), -1)
    qmin, qmax = np.array(0, np.uint8), np.array(255, np.uint8)  # the input's QuantType.QUInt8
    zero, scale = compute_scale_zp(np.float32(images.min()), np.float32(images.max()), qmin, qmax)
    zero, scale = float(zero), float(scale)
    moved = 1.0  # every pixel the same value: nothing to round
    if scale != 0.0:
        rounded = ((np.clip(np.round(images / scale) + zero, 0, 255) - zero) * scale).astype(np.float32)
        moved = float(row_cosines(a, run_batched(session, rounded).reshape(len(images), -1)).min())
    spread = 0.0
    if len(images) >= 2:
        z = a.astype(np.float64) / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        spread = float(np.median((z @ z.T)[np.triu_indices(len(z), k=1)]))
    return {"input_rounding": {"images": len(images), "min_cosine": moved},
            "embedding_spread": {"images": len(images), "median_pairwise_cosine": spread}}


def diagnosis(quantization: dict | None, failures: list[str] | None = None) -> str | None:
    """Why an int8 graph cannot pass the parity gate, where its probes say so; else None.

    failures: the gate's failure messages for the int8 graph (parity.ParityReport.failures); the spread reason is
    given only where agreement failed, the one criterion it explains."""
    from metaedge.parity import AGREEMENT_FAILURE, TOLERANCES

    quantization = quantization or {}
    probe = quantization.get("input_rounding")
    budget = 1.0 - TOLERANCES["int8"]["min_cosine"]
    if probe is not None and 1.0 - probe["min_cosine"] > PROBE_SHARE * budget:
        cosine = probe["min_cosine"]
        return (f"this network is too sensitive for int8: rounding only its input to the int8 graph's 8-bit grid "
                f"already moves the float graph to min cosine {cosine:.4f} on {probe['images']} calibration "
                f"images, {(1.0 - cosine) / budget:.0%} of the int8 cosine budget (randomly initialised or barely "
                "trained networks are this sensitive; no calibration setting fixes it): export it in fp32")  # fmt: skip
    spread = quantization.get("embedding_spread")
    agreement_failed = any(f.startswith(AGREEMENT_FAILURE) for f in failures or ())
    if spread is not None and agreement_failed and spread["median_pairwise_cosine"] >= SPREAD_LIMIT:
        return (f"this network's embeddings are nearly parallel (median cosine {spread['median_pairwise_cosine']:.4f}"
                f" between two of {spread['images']} calibration images): int8 keeps their direction, but the "
                "few-shot answers hang on the small part in which they differ, which rounding moves; train it "
                "longer (or from pretrained weights) so that images of different classes point apart, or export "
                "it in fp32")  # fmt: skip
    return None


def id_suffix(calibration: np.ndarray | None) -> str:
    """A quantized model's id suffix: "-int8", then a digest of its calibration images as the quantizer saw them.

    int8 embeddings depend on which images, and how many, the ranges came from: two calibrations of one network
    are two models, and a gallery enrolled through one must not match the other (issue 17's ResNet-12 student
    moved a quarter of a point between 512 and 2048 images). None: the calibration is not known.
    """
    if calibration is None:
        return "-int8"
    return "-int8-" + hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest()[:8]


def check_calibration_size(size: int | None) -> int:
    """The number of calibration images asked for (None: CALIBRATION_IMAGES), or MetaedgeError naming the option."""
    if size is None:
        return CALIBRATION_IMAGES
    if size < 1:
        raise MetaedgeError(f"--calibration-size must be at least 1, got {size}")
    return size


def calibration_sample(pixels: np.ndarray, count: int = CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    """A fixed random sample of `count` images (all of them where there are fewer), in their original order."""
    if len(pixels) <= count:
        return pixels
    pick = np.sort(np.random.default_rng(seed).choice(len(pixels), count, replace=False))
    return pixels[pick]
