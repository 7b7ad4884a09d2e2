"""The preprocessing spec: exact pixel values, serialisation, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from metaedge.data import PreprocessSpec
from metaedge.data.preprocess import PRESETS, preprocess_settings
from metaedge.errors import DataError


def test_values_of_a_known_image():
    image = Image.new("L", (4, 4), 255)  # white paper
    image.putpixel((0, 0), 0)  # one black ink dot
    spec = PreprocessSpec(channels=1, size=8, invert=True, mean=(0.5,), std=(0.25,), resample="nearest")
    x = spec(image)
    assert x.shape == (1, 8, 8) and x.dtype == np.float32
    # ink: 1 - 0 = 1 -> (1 - 0.5) / 0.25 = 2; paper: 1 - 1 = 0 -> -2
    assert x[0, 0, 0] == pytest.approx(2.0)
    assert x[0, 7, 7] == pytest.approx(-2.0)


@pytest.mark.parametrize(
    "spec",
    [PreprocessSpec(), PreprocessSpec(channels=1, invert=False, mean=(0.5,), std=(0.3,)),
     PreprocessSpec(channels=3, size=32, invert=False, mean=PRESETS["rgb"]["mean"], std=PRESETS["rgb"]["std"])],
    ids=["omniglot", "grey-standardised", "rgb-imagenet-stats"],
)  # fmt: skip
def test_normalize_is_the_float32_formula_bit_for_bit(spec):
    """The runtime normalises by table lookup; training, export checks and the device must still see exactly
    what ((1 - p / 255 if invert) - mean) / std gives in float32, for one image and for batches."""
    rng = np.random.default_rng(0)
    for shape in [(spec.channels, 7, 7), (5, spec.channels, 4, 4), (2, 3, spec.channels, 3, 3)]:
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        pixels.flat[:256] = np.arange(256)[: pixels.size]  # every level that fits
        x = pixels.astype(np.float32) / np.float32(255)
        if spec.invert:
            x = np.float32(1) - x
        mean = np.asarray(spec.mean, np.float32)[:, None, None]
        want = (x - mean) / np.asarray(spec.std, np.float32)[:, None, None]
        got = spec.normalize(pixels)
        assert got.dtype == np.float32 and got.shape == shape
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        np.testing.assert_array_equal(spec.normalize(pixels.astype(np.float32)), want)  # not uint8: arithmetic


def test_rgb_from_grayscale_and_grayscale_from_rgb():
    rgb = Image.new("RGB", (10, 10), (255, 0, 0))
    gray = PreprocessSpec(channels=1, size=10, invert=False)(rgb)
    assert gray.shape == (1, 10, 10)
    assert gray[0, 0, 0] == pytest.approx(76 / 255, abs=1 / 255)  # ITU-R 601 luma of pure red
    spec3 = PreprocessSpec(channels=3, size=10, invert=False, mean=(0, 0, 0), std=(1, 1, 1))
    assert spec3(Image.new("L", (5, 5), 128)).shape == (3, 10, 10)


def test_round_trip_through_json():
    spec = PreprocessSpec(channels=3, size=84, invert=False, mean=(0.4, 0.5, 0.6), std=(0.2, 0.2, 0.3))
    assert PreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize(
    "kwargs, message",
    [({"channels": 2}, "channels"), ({"size": 2}, "size"), ({"mean": (0, 0)}, "mean and std"),
     ({"std": (0.0,)}, "positive"), ({"resample": "magic"}, "resample"), ({"resize_mode": "fit"}, "resize_mode"),
     ({"crop_fraction": 0.0}, "crop_fraction"), ({"crop_fraction": 1.5}, "crop_fraction"),
     ({"channel_order": "BGR"}, "channel_order"), ({"channels": 3, "mean": (0,) * 3, "std": (1,) * 3,
                                                   "channel_order": "L"}, "channel_order")],
)  # fmt: skip
def test_invalid_specs_are_refused(kwargs, message):
    with pytest.raises(DataError, match=message):
        PreprocessSpec(**kwargs)


def test_unknown_key_is_refused():
    with pytest.raises(DataError, match="unknown key"):
        PreprocessSpec.from_dict({"size": 28, "colour": "blue"})


def test_old_manifests_read_with_the_defaults_of_new_keys():
    """Bundles and checkpoints written before the colour keys existed keep their meaning: plain resize, L/RGB."""
    old = {"channels": 1, "size": 28, "invert": True, "mean": [0.0], "std": [1.0], "resample": "box"}
    spec = PreprocessSpec.from_dict(old)
    assert (spec.resize_mode, spec.crop_fraction, spec.channel_order) == ("plain", 1.0, "L")
    assert PreprocessSpec.from_dict({**old, "channels": 3, "mean": [0] * 3, "std": [1] * 3}).channel_order == "RGB"


def test_shorter_side_resize_then_centre_crop_shapes():
    wide = Image.new("RGB", (300, 100), (10, 20, 30))
    wide.paste((200, 0, 0), (140, 0, 160, 100))  # a red bar in the middle survives the crop
    spec = PreprocessSpec.from_dict({**PRESETS["imagenet"], "size": 64, "mean": [0] * 3, "std": [1] * 3})
    x = spec(wide)  # shorter side 100 -> 73 (64 / 0.875), longer 219; centre 64x64
    assert x.shape == (3, 64, 64)
    assert x[0, 32, 32] == pytest.approx(200 / 255, abs=2 / 255) and x[0, 32, 2] == pytest.approx(10 / 255, abs=2 / 255)


def test_preprocess_settings_preset_or_json_file(tmp_path):
    assert preprocess_settings("imagenet")["size"] == 224
    path = tmp_path / "pre.json"
    path.write_text(json.dumps({"channels": 3, "size": 96, "invert": False, "mean": [0.5] * 3, "std": [0.5] * 3,
                                "channel_order": "BGR"}))  # fmt: skip
    assert PreprocessSpec.from_dict(preprocess_settings(str(path))).channel_order == "BGR"
    path.write_text(json.dumps({"size": 96, "colour": "blue"}))
    with pytest.raises(DataError, match="unknown key"):
        preprocess_settings(str(path))
    with pytest.raises(DataError, match="neither a preset"):
        preprocess_settings(str(tmp_path / "missing.json"))
