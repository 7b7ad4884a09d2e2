"""timm and torchvision backbones by name through the registry, never downloaded; weights from a local file only
(metaedge/weights.py); train, evaluate, export with parity and int8 on colour photos."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from metaedge.cli import app
from metaedge.errors import MetaedgeError
from metaedge.models import create_backbone
from metaedge.weights import WeightsError, load_init_weights, read_state_dict

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10_600.zip"
runner = CliRunner()

# The edge networks issue 18 names, with the feature size their libraries document: timm's pooled features after
# its head convolution (`head_hidden_size`) or last stage (`num_features`); torchvision's classifier's in_features.
EDGE = {
    "timm:mobilenetv3_small_100": 1024, "timm:mobilenetv3_large_100": 1280, "timm:efficientnet_lite0": 1280,
    "timm:efficientnet_b0": 1280, "timm:resnet18": 512, "timm:regnety_004": 440,
    "torchvision:mobilenet_v3_small": 576, "torchvision:mobilenet_v3_large": 960,
    "torchvision:efficientnet_b0": 1280, "torchvision:resnet18": 512, "torchvision:regnet_y_400mf": 440,
}  # fmt: skip


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test: pretrained weights come from --init-weights files alone."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


@pytest.mark.parametrize("name", sorted(EDGE))
def test_edge_networks_build_with_their_documented_feature_size(name):
    backbone = create_backbone(name, in_channels=3).eval()
    assert backbone.embedding_dim == EDGE[name]
    with torch.no_grad():
        assert backbone(torch.zeros(2, 3, 32, 32)).shape == (2, EDGE[name])


def test_feature_size_comes_from_the_network_itself():
    import timm

    for name in ("mobilenetv3_small_050", "resnet34"):  # not in any table here
        net = timm.create_model(name, pretrained=False, num_classes=0)
        assert create_backbone(f"timm:{name}").embedding_dim == getattr(net, "head_hidden_size", net.num_features)


@pytest.mark.parametrize(
    "name, expected",
    [("timm:mobilenetv3_smal_100", "timm:mobilenetv3_small_100"), ("torchvision:resnet19", "torchvision:resnet18"),
     ("torchvision:regnet_y_400", "torchvision:regnet_y_400mf"), ("conv5", "conv4"), ("tim:resnet18", "timm:")],
)  # fmt: skip
def test_unknown_names_list_close_matches(name, expected):
    with pytest.raises(MetaedgeError, match="close matches") as info:
        create_backbone(name)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_torchvision_refuses_grayscale_with_the_reason():
    with pytest.raises(MetaedgeError, match="3-channel"):
        create_backbone("torchvision:resnet18", in_channels=1)


# --- --init-weights -------------------------------------------------------------------------------------------


def tv_state(name: str, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None).state_dict()


def test_safetensors_and_torch_files_load_with_a_key_report(tmp_path):
    from safetensors.torch import save_file

    state = tv_state("resnet18", seed=1)  # as a user's `torchvision.models.resnet18(weights=...).state_dict()`
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "r18.safetensors"))
    torch.save(state, tmp_path / "r18.pth")
    for file, fmt in (("r18.safetensors", "safetensors"), ("r18.pth", "torch")):
        backbone = create_backbone("torchvision:resnet18")
        report = load_init_weights(backbone, tmp_path / file)
        assert report.format == fmt and report.missing == [] and sorted(report.unexpected) == ["fc.bias", "fc.weight"]
        assert report.loaded == len(state) - 2
        torch.testing.assert_close(backbone.network.conv1.weight, state["conv1.weight"], rtol=0, atol=0)
    # A training script's checkpoint ({"state_dict": ...}, DataParallel's "module." keys) loads the same.
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ckpt.pth")
    backbone = create_backbone("torchvision:resnet18")
    assert load_init_weights(backbone, tmp_path / "ckpt.pth").loaded == len(state) - 2
    torch.testing.assert_close(backbone.network.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_a_metaedge_checkpoint_starts_a_backbone(tiny_run_dir):
    """A run's own checkpoint (backbone tensors beside its optimizer state) is an --init-weights file too."""
    from safetensors.torch import load_file

    saved = load_file(str(tiny_run_dir / "last.safetensors"))
    backbone = create_backbone("conv4", in_channels=1, width=16)
    report = load_init_weights(backbone, tiny_run_dir / "last.safetensors")
    own = backbone.state_dict()
    assert report.loaded == len(own) and report.missing == []
    assert all(torch.equal(v, saved[f"backbone.{k}"]) for k, v in own.items())
    # What it has no place for is reported under the file's own names, not dropped in silence.
    assert sorted(report.unexpected) == sorted(k for k in saved if not k.startswith("backbone."))
    assert any(k.startswith("optimizer.") for k in report.unexpected)


def test_weights_of_another_architecture_name_the_mismatched_keys(tmp_path):
    torch.save(tv_state("mobilenet_v3_large"), tmp_path / "large.pth")
    backbone = create_backbone("torchvision:mobilenet_v3_small")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(WeightsError, match=r"another architecture .*shared tensors differ in shape "
                                           r"\(features\.[\w.]+: file \[\d+(, \d+)*\], model \[") as info:
        load_init_weights(backbone, tmp_path / "large.pth")
    assert "\n" not in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # nothing changed
    stem = {k: v for k, v in tv_state("resnet18").items() if k.startswith(("conv1.", "bn1."))}
    torch.save(stem, tmp_path / "stem.pth")  # no shape clash, but only the stem of the network
    with pytest.raises(WeightsError, match=r"another architecture .*they fill 6 of its \d+ tensors"):
        load_init_weights(create_backbone("torchvision:resnet18"), tmp_path / "stem.pth")


def test_pickles_and_other_files_are_refused_with_the_reason(tmp_path):
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}))
    torch.save(torchvision.models.resnet18(weights=None), tmp_path / "whole_model.pth")  # a pickled nn.Module
    (tmp_path / "notes.txt").write_text("conv1.weight = 0\n")
    for name, reason in (("plain.pkl", "weights_only=True"), ("whole_model.pth", "weights_only=True"),
                         ("notes.txt", "neither safetensors nor a torch.save file")):  # fmt: skip
        with pytest.raises(WeightsError, match=reason) as info:
            read_state_dict(tmp_path / name)
        assert "\n" not in str(info.value) and "refused" in str(info.value)


@pytest.fixture(scope="module")
def cifar_small(tmp_path_factory) -> Path:
    """A `class/image` zip of real CIFAR-10 photos: 6 classes x 20, inside a wrapping folder like the shared zip."""
    if not CIFAR.is_file():
        pytest.skip(f"the shared CIFAR-10 photos are not at {CIFAR}")
    out = tmp_path_factory.mktemp("cifar") / "cifar_small.zip"
    with zipfile.ZipFile(CIFAR) as src, zipfile.ZipFile(out, "w") as dst:
        for c in ("airplane", "automobile", "bird", "cat", "deer", "dog"):
            for i in range(20):
                dst.writestr(f"cifar10/{c}/{i:04d}.jpg", src.read(f"cifar10/{c}/{i:04d}.jpg"))
    return out


@pytest.fixture(scope="module")
def cifar_verify(tmp_path_factory) -> Path:
    """All ten classes x 12 test photos: the exporter's open-set calibration wants 2 enrolled + 5 stranger classes
    of one group, more than the 3 a tiny run holds out."""
    out = tmp_path_factory.mktemp("cifar") / "verify.zip"
    with zipfile.ZipFile(CIFAR) as src, zipfile.ZipFile(out, "w") as dst:
        for n in src.namelist():
            if n.endswith(".jpg") and 500 <= int(n[-8:-4]) < 512:
                dst.writestr(n, src.read(n))
    return out


def train_args(data: Path, out: Path, backbone: str, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--backbone", backbone, "--preprocess", "rgb",
            "--image-size", "32", "--no-rotations", "--way", "3", "--shot", "2", "--query", "3", "--episodes", "4",
            "--holdout-groups", "3", "--val-groups", "0", "--val-every", "4", "--json", *extra]  # fmt: skip


def test_cli_bad_backbone_and_bad_weights_are_one_line_and_write_nothing(cifar_small, tmp_path):
    (tmp_path / "w.pkl").write_bytes(pickle.dumps({"a": 1}))
    torch.save(tv_state("resnet18"), tmp_path / "r18.pth")
    cases = [(["--backbone", "timm:mobilenetv3_smal_100"], "close matches: timm:mobilenetv3_small_100"),
             (["--init-weights", str(tmp_path / "w.pkl")], "refused"),
             (["--init-weights", str(tmp_path / "r18.pth")], "another architecture")]  # fmt: skip
    for extra, message in cases:
        args = train_args(cifar_small, tmp_path / "run", "timm:mobilenetv3_small_100", *extra)
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timm:mobilenetv3_small_100", "torchvision:resnet18"])
def test_train_evaluate_export_int8_on_photos(cifar_small, cifar_verify, tmp_path, name):
    from safetensors.torch import save_file

    # Start from a weights file, as a user with pretrained weights would (random ones here: nothing can be downloaded).
    source = create_backbone(name).network.state_dict()
    save_file({k: v.contiguous() for k, v in source.items()}, str(tmp_path / "init.safetensors"))
    run = tmp_path / "run"
    args = train_args(cifar_small, run, name, "--init-weights", str(tmp_path / "init.safetensors"))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["init_weights"]["missing"] == [] and summary["init_weights"]["format"] == "safetensors"
    res = runner.invoke(app, ["evaluate", str(run), "--way", "3", "--shot", "1", "--query", "5", "--episodes", "20",
                              "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["way"] == 3
    for extra in ([], ["--int8"]):
        bundle = tmp_path / f"bundle{''.join(extra)}"
        res = runner.invoke(app, ["export", str(run), "--out", str(bundle), "--verify-data", str(cifar_verify),
                                  "--calibration-data", str(cifar_small), "--json", *extra])  # fmt: skip
        if extra and name.startswith("timm:mobilenetv3"):
            # An untrained MobileNetV3 misses the int8 tolerances under every ONNX Runtime quantization setting
            # (metaedge/quantize.py's docstring): the parity check must refuse it, in one line, writing nothing.
            if res.exit_code == 1:
                assert "parity check failed, nothing written" in res.output and not bundle.exists()
                continue
        assert res.exit_code == 0, res.output
        parity = json.loads(res.stdout)["parity"][0]
        assert parity["passed"] and parity["precision"] == ("int8" if extra else "fp32")
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["preprocess"]["channel_order"] == "RGB" and manifest["backbone"]["name"] == name
