"""The preprocessing spec: exact pixel values, serialisation, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from metaedge.data import PreprocessSpec
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
     ({"std": (0.0,)}, "positive"), ({"resample": "magic"}, "resample")],
)  # fmt: skip
def test_invalid_specs_are_refused(kwargs, message):
    with pytest.raises(DataError, match=message):
        PreprocessSpec(**kwargs)


def test_unknown_key_is_refused():
    with pytest.raises(DataError, match="unknown key"):
        PreprocessSpec.from_dict({"size": 28, "colour": "blue"})
