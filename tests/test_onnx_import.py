"""`metaedge export --onnx`: an ONNX feature extractor made outside metaedge (torchvision MobileNetV3-Small by a plain
torch.onnx.export) wrapped into a bundle, run through metaedge.Runtime and the CLI on colour photos, against PyTorch."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from metaedge.cli import app
from metaedge.errors import MetaedgeError
from metaedge.onnx_import import import_onnx

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10_600.zip"
CLASSES = ("cat", "ship", "frog", "truck")
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
runner = CliRunner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """`class/image` folders of real CIFAR-10 test photos: 4 classes x 8."""
    if not CIFAR.is_file():
        pytest.skip(f"the shared CIFAR-10 photos are not at {CIFAR}")
    root = tmp_path_factory.mktemp("photos")
    with zipfile.ZipFile(CIFAR) as z:
        for c in CLASSES:
            (root / c).mkdir()
            for i in range(8):
                (root / c / f"{i:02d}.jpg").write_bytes(z.read(f"cifar10/{c}/{500 + i:04d}.jpg"))
    return root


def reference_transform():
    t = torchvision.transforms
    return t.Compose([t.Resize(256), t.CenterCrop(224), t.ToTensor(),
                      t.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])  # fmt: skip


def photo_batch(root: Path) -> tuple[list[Path], torch.Tensor]:
    paths = sorted(root.glob("*/*.jpg"))
    return paths, torch.stack([reference_transform()(Image.open(p).convert("RGB")) for p in paths])


@pytest.fixture(scope="module")
def network(photos):
    """torchvision MobileNetV3-Small, classifier removed. No pretrained weights can be had here, and a randomly
    initialised one gives vanishing (1e-7) features, so its batch-norm statistics are set from the photos: a
    network with a real spread of features, as one trained elsewhere has."""
    return mobilenet_with_statistics_of(photo_batch(photos)[1])


def mobilenet_with_statistics_of(batch: torch.Tensor) -> torch.nn.Module:
    """torchvision MobileNetV3-Small (seed 0, classifier removed), batch-norm statistics the averages over `batch`
    (N, 3, H, W), preprocessed; in eval mode."""
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(weights=None)
    net.classifier = torch.nn.Identity()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batch
    net.train()
    with torch.no_grad():
        net(batch)
    return net.eval()


def plain_export(module, path: Path) -> Path:
    """What a user elsewhere runs: torch.onnx.export with a dynamic batch, nothing from metaedge."""
    torch.onnx.export(module, (torch.zeros(2, 3, 224, 224),), str(path), input_names=["input"],
                      output_names=["features"], dynamic_shapes=({0: torch.export.Dim("batch")},))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def onnx_file(network, tmp_path_factory) -> Path:
    return plain_export(network, tmp_path_factory.mktemp("onnx") / "mobilenet_v3_small.onnx")


@pytest.mark.slow
def test_bundle_gives_pytorchs_embeddings_and_answers(network, onnx_file, photos, tmp_path):
    import metaedge

    result = import_onnx(onnx_file, tmp_path / "bundle", preprocess="imagenet", verify_data=[str(photos)])
    manifest = result.bundle.manifest
    assert manifest["preprocess"]["channel_order"] == "RGB" and manifest["preprocess"]["resize_mode"] == "shorter_crop"
    assert manifest["embedding_dim"] == 576 and manifest["backbone"]["pooling"].startswith("none")
    assert manifest["open_set"]["threshold"] is not None and result.parity[0].passed
    paths, x = photo_batch(photos)
    with torch.no_grad():
        expected = network(x).numpy()
    with metaedge.Runtime(tmp_path / "bundle") as rt:
        got = rt.embed(paths)
        assert np.abs(got - expected).max() < 1e-3
        cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cos.min() > 0.9999
        support = [p for p in paths if int(p.stem) < 3]
        for c in CLASSES:
            rt.enroll(c, [p for p in support if p.parent.name == c])
        queries = [p for p in paths if int(p.stem) >= 3]
        answers = [p.label for p in rt.classify(queries, threshold=None)]
    # The same decisions from PyTorch's embeddings: cosine to the mean support embedding of each class (the
    # gallery's prototype).
    protos = np.stack([expected[[i for i, p in enumerate(paths) if p in support and p.parent.name == c]].mean(0)
                       for c in CLASSES])  # fmt: skip
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    rows = [i for i, p in enumerate(paths) if p in queries]
    assert answers == [CLASSES[j] for j in (expected[rows] @ protos.T).argmax(1)]


@pytest.mark.slow
def test_feature_map_output_is_pooled_in_the_graph(network, photos, tmp_path):
    features = plain_export(network.features.eval(), tmp_path / "features.onnx")  # (batch, 576, 7, 7)
    result = import_onnx(features, tmp_path / "bundle", preprocess="imagenet", verify_data=[str(photos)])
    assert result.bundle.manifest["backbone"]["pooling"].startswith("global average")
    import onnxruntime as ort

    paths, x = photo_batch(photos)
    session = ort.InferenceSession(str(result.bundle.onnx_path))
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        expected = network.features(x).mean(dim=(2, 3)).numpy()
    assert got.shape == (len(paths), 576) and np.abs(got - expected).max() < 1e-3


@pytest.mark.slow
def test_cli_export_enroll_classify(onnx_file, photos, tmp_path):
    bundle, store = tmp_path / "bundle", tmp_path / "gallery.db"
    res = runner.invoke(app, ["export", "--onnx", str(onnx_file), "--preprocess", "imagenet", "--verify-data",
                              str(photos), "--out", str(bundle), "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["parity"][0]["max_abs_diff"] == 0.0  # the wrapped graph is the given one
    for c in CLASSES[:2]:
        res = runner.invoke(app, ["enroll", c, *[str(photos / c / f"{i:02d}.jpg") for i in range(3)],
                                  "--bundle", str(bundle), "--store", str(store)])  # fmt: skip
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["classify", str(photos / "cat" / "05.jpg"), "--bundle", str(bundle), "--store",
                              str(store), "--no-threshold", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["label"] in CLASSES[:2]


def tiny_graph(path: Path, inputs: int = 1, out_type: str = "FLOAT") -> Path:
    """A minimal 'feature extractor': global average pool of the image, with extra inputs or an integer output."""
    import onnx
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["batch", 3, 224, 224]) for i in range(inputs)]
    nodes = [helper.make_node("GlobalAveragePool", ["x0"], ["p"]), helper.make_node("Flatten", ["p"], ["f"])]
    if inputs > 1:
        nodes.append(helper.make_node("Add", ["x0", "x1"], ["unused"]))
    if out_type != "FLOAT":
        nodes.append(helper.make_node("Cast", ["f"], ["y"], to=getattr(TensorProto, out_type)))
    out = helper.make_tensor_value_info("f" if out_type == "FLOAT" else "y", getattr(TensorProto, out_type),
                                        ["batch", 3])  # fmt: skip
    model = helper.make_model(helper.make_graph(nodes, "tiny", ins, [out]), opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def test_tiny_graph_is_accepted(photos, tmp_path):
    """The control for the refusals below: the same graph with one float input and output makes a bundle."""
    result = import_onnx(tiny_graph(tmp_path / "ok.onnx"), tmp_path / "b", preprocess="imagenet",
                         verify_data=[str(photos)])  # fmt: skip
    assert result.bundle.embedding_dim == 3


@pytest.mark.parametrize("kwargs, message", [({"inputs": 2}, "2 inputs"), ({"out_type": "INT64"}, "INT64, not FLOAT")])
def test_bad_graphs_are_refused_in_one_line_and_nothing_written(photos, tmp_path, kwargs, message):
    graph = tiny_graph(tmp_path / "bad.onnx", **kwargs)
    with pytest.raises(MetaedgeError, match=message):
        import_onnx(graph, tmp_path / "b", preprocess="imagenet", verify_data=[str(photos)])
    res = runner.invoke(app, ["export", "--onnx", str(graph), "--preprocess", "imagenet", "--verify-data",
                              str(photos), "--out", str(tmp_path / "b")])  # fmt: skip
    assert res.exit_code == 1 and message in res.output and len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]  # no bundle, no staging folder


def test_size_mismatch_and_missing_verify_data_are_refused(photos, tmp_path):
    graph = tiny_graph(tmp_path / "g.onnx")
    spec = tmp_path / "pre.json"
    spec.write_text(json.dumps({"channels": 3, "size": 160, "invert": False, "mean": [0.5] * 3, "std": [0.5] * 3}))
    with pytest.raises(MetaedgeError, match="224x224 images, the preprocessing gives 160x160"):
        import_onnx(graph, tmp_path / "b", preprocess=str(spec), verify_data=[str(photos)])
    with pytest.raises(MetaedgeError, match="needs --verify-data"):
        import_onnx(graph, tmp_path / "b", preprocess="imagenet", verify_data=[])
    assert not (tmp_path / "b").exists()
