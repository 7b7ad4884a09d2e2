"""int8 for the edge backbones (metaedge/quantize.py): what stays float is recorded, and a network too sensitive for
int8 is refused with that reason, not a bare parity failure.

The network: torchvision MobileNetV3-Small at 64x64 (HardSwish, squeeze-excite), its batch-norm statistics set from
CIFAR-10 photos as tests/test_onnx_import.py does (no pretrained weights can be had here), exported by a plain
torch.onnx.export and wrapped by `metaedge export --onnx --int8`. Such a network fails the int8 gate under every
ONNX Runtime quantization setting (metaedge/quantize.py's docstring has the figures): rounding its input alone to
8 bits moves its embeddings by half the int8 cosine budget. The tiny Conv4 run is the control: the same probe
barely moves it, and its int8 graph passes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import test_onnx_import
from PIL import Image

from metaedge import checkpoint as ckpt
from metaedge import exporter, quantize
from metaedge.exporter import ExportError
from metaedge.onnx_import import import_onnx
from metaedge.parity import TOLERANCES

SIZE = 64
photos = test_onnx_import.photos  # the module-scoped fixture: 4 classes x 8 CIFAR-10 photos in class/ folders
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
# The diagnosis fires where input rounding alone uses this much of the int8 cosine budget.
FLAG = 1.0 - quantize.PROBE_SHARE * (1.0 - TOLERANCES["int8"]["min_cosine"])


@pytest.fixture(scope="module")
def mobilenet(photos, tmp_path_factory) -> Path:
    """The MobileNetV3-Small feature extractor as a user elsewhere exports it: (batch, 3, 64, 64) -> (batch, 576)."""
    t = torchvision.transforms
    prep = t.Compose([t.Resize(73), t.CenterCrop(SIZE), t.ToTensor(),
                      t.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])  # fmt: skip
    batch = torch.stack([prep(Image.open(p).convert("RGB")) for p in sorted(photos.glob("*/*.jpg"))])
    net = test_onnx_import.mobilenet_with_statistics_of(batch)
    path = tmp_path_factory.mktemp("onnx") / "mobilenet_v3_small.onnx"
    torch.onnx.export(net.eval(), (torch.zeros(2, 3, SIZE, SIZE),), str(path), input_names=["input"],
                      output_names=["features"], dynamic_shapes=({0: torch.export.Dim("batch")},))  # fmt: skip
    return path


@pytest.mark.slow
def test_int8_refusal_says_the_network_is_too_sensitive(mobilenet, photos, tmp_path):
    with pytest.raises(ExportError, match="nothing written") as refused:
        import_onnx(mobilenet, tmp_path / "bundle", preprocess="imagenet", verify_data=[str(photos)], int8=True)
    message = str(refused.value)
    assert "(int8): min cosine similarity" in message  # the gate's own verdict comes first, unchanged
    assert "too sensitive for int8: rounding only its input" in message and "export it in fp32" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_manifest_records_what_stayed_float_and_the_probe(mobilenet, photos, tmp_path):
    import onnx

    result = import_onnx(mobilenet, tmp_path / "bundle", preprocess="imagenet", verify_data=[str(photos)], int8=True,
                         force=True)  # fmt: skip
    q = result.bundle.manifest["backbone"]["quantization"]
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(mobilenet)).graph.node)
    assert q["quantized_ops"]["QLinearConv"] == convs and "Conv" not in q["float_ops"]  # every convolution int8
    # HardSwish (HardSigmoid times x after ONNX Runtime's pre-processing) and squeeze-excite's pooling stay float.
    assert {"HardSigmoid", "ReduceMean"} <= set(q["float_ops"])
    assert q["input_rounding"]["images"] == len(list(photos.glob("*/*.jpg")))
    assert q["input_rounding"]["min_cosine"] < FLAG
    assert quantize.diagnosis(q) is not None and not result.parity[-1].passed


@pytest.mark.slow
def test_conv4_int8_is_not_flagged(tiny_run_dir, tmp_path):
    """The control: a network int8 suits. Input rounding leaves it in place, so no diagnosis; and MaxPool, which
    ONNX Runtime runs on the 8-bit tensors, is counted as quantized, not as float."""
    loaded = ckpt.load(tiny_run_dir)
    graph, out = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    exporter.export_onnx(loaded, graph)
    calibration = loaded.preprocess.normalize(exporter.calibration_images(loaded, None))
    q = quantize.quantize_int8(graph, out, calibration, exporter.INPUT)
    assert q["input_rounding"] == {"images": quantize.PROBE_IMAGES, "min_cosine": pytest.approx(1.0, abs=1e-4)}
    assert quantize.diagnosis(q) is None
    assert q["quantized_ops"]["QLinearConv"] == 4 and q["quantized_ops"]["MaxPool"] == 4
    assert "Conv" not in q["float_ops"] and "MaxPool" not in q["float_ops"]
