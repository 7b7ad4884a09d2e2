"""Colour photos through the one preprocessing path: pixel parity with torchvision's transforms on real photos,
EXIF orientation, transparency, channel order, and the same pixels from a dataset and from the device's decoder."""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metaedge.data import PreprocessSpec, open_dataset, split_groups
from metaedge.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, PRESETS
from metaedge.images import preprocess

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10_600.zip"
T = pytest.importorskip("torchvision.transforms")


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Real photos: 12 CIFAR-10 test JPEGs as they are (32x32), and wide and tall ones made by joining them."""
    if not CIFAR.is_file():
        pytest.skip(f"the shared CIFAR-10 photos are not at {CIFAR}")
    with zipfile.ZipFile(CIFAR) as z:
        names = [f"cifar10/{c}/{500 + i:04d}.jpg" for c in ("cat", "ship", "frog", "truck") for i in range(3)]
        square = [Image.open(io.BytesIO(z.read(n))).convert("RGB") for n in names]
    wide = Image.new("RGB", (96, 32))
    tall = Image.new("RGB", (32, 71))  # 71: odd, so centre crops land on half pixels
    for i in range(3):
        wide.paste(square[i], (32 * i, 0))
        tall.paste(square[3 + i], (0, 32 * i))
    return [*square, wide, tall, wide.resize((301, 100)), tall.resize((100, 223))]


@pytest.fixture(scope="module")
def camera_photos() -> list[Image.Image]:
    """scikit-image's bundled camera photos at full size (one square, three wide; 300-640 px): the resizes are real
    downscales, which the 32x32 CIFAR photos never exercise (Pillow's reducing_gap shortcut, say, changes them)."""
    data = pytest.importorskip("skimage.data")
    return [Image.fromarray(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee", "rocket")]


def torchvision_pipeline(spec: PreprocessSpec):
    interp = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[spec.resample]
    if spec.resize_mode == "plain":
        steps = [T.Resize((spec.size, spec.size), interpolation=interp)]
    else:
        steps = [T.Resize(math.floor(spec.size / spec.crop_fraction), interpolation=interp), T.CenterCrop(spec.size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(spec.mean, spec.std)])


@pytest.mark.parametrize(
    "settings",
    [PRESETS["imagenet"],  # Resize(256) + CenterCrop(224), bilinear
     {**PRESETS["imagenet"], "size": 81, "crop_fraction": 0.9, "resample": "bicubic"},  # crops on half pixels
     {**PRESETS["rgb"], "size": 32}, {**PRESETS["rgb"], "size": 57, "resample": "bicubic"}],
)  # fmt: skip
@pytest.mark.parametrize("source", ["photos", "camera_photos"])
def test_same_tensor_as_torchvision_transforms(request, source, settings):
    spec = PreprocessSpec.from_dict({"size": 224, **settings})
    reference = torchvision_pipeline(spec)
    for photo in request.getfixturevalue(source):
        ours = spec(photo)
        theirs = reference(photo).numpy()
        assert ours.shape == theirs.shape == (3, spec.size, spec.size)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6)


def test_exif_orientation_is_applied(photos):
    upright = photos[12]  # 96x32, wide: turned sideways it has another shape
    stored = upright.rotate(90, expand=True)  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    stored.save(buf, format="PNG", exif=exif)  # lossless, so the pixels can be compared exactly
    spec = PreprocessSpec.from_dict({**PRESETS["imagenet"], "size": 64})
    np.testing.assert_array_equal(spec(Image.open(io.BytesIO(buf.getvalue()))), spec(upright))
    assert not np.array_equal(spec(stored), spec(upright))  # without the tag, another picture


def test_transparency_is_flattened_onto_white(photos):
    rgba = photos[0].convert("RGBA")
    alpha = np.full((32, 32), 255, np.uint8)
    alpha[:, :16] = 0  # left half transparent; its hidden colour is the photo's
    rgba.putalpha(Image.fromarray(alpha))
    spec = PreprocessSpec.from_dict({**PRESETS["rgb"], "size": 32, "mean": [0, 0, 0], "std": [1, 1, 1]})
    x = spec(rgba)
    np.testing.assert_array_equal(x[:, :, :16], 1.0)  # white
    np.testing.assert_allclose(x[:, :, 16:], spec(photos[0])[:, :, 16:])
    assert not np.allclose(spec(rgba.convert("RGB")), x)  # a plain convert keeps the hidden colours


def test_channel_order_bgr_reverses_the_channels(photos):
    rgb = PreprocessSpec.from_dict({**PRESETS["rgb"], "size": 32, "mean": [0, 0, 0], "std": [1, 1, 1]})
    bgr = PreprocessSpec.from_dict({**rgb.to_dict(), "channel_order": "BGR"})
    assert rgb.channel_order == "RGB" and bgr.to_dict()["channel_order"] == "BGR"
    np.testing.assert_array_equal(bgr(photos[1]), rgb(photos[1])[::-1])


def test_dataset_and_device_decode_the_same_pixels(photos):
    """Training reads photos through data/dataset.py, the device through images.preprocess: one path, one result."""
    spec = PreprocessSpec.from_dict(PRESETS["imagenet"])
    with zipfile.ZipFile(CIFAR) as z:
        members = [n for n in z.namelist() if n.startswith("cifar10/cat/05")][:4]
        raw = [z.read(n) for n in members]
    dataset = open_dataset(CIFAR)
    cat = next(c for c in dataset.classes if c.name == "cat")
    keep = {r.member for r in cat.images} & set(members)
    loaded = dataset.subset(["cifar10/cat"]).load(spec)
    index = [i for i, r in enumerate(cat.images) if r.member in keep]
    np.testing.assert_array_equal(spec.normalize(loaded.pixels[index]), preprocess(raw, spec))


def test_cifar_zip_loads_as_class_image_and_splits_by_class():
    if not CIFAR.is_file():
        pytest.skip(f"the shared CIFAR-10 photos are not at {CIFAR}")
    dataset = open_dataset(CIFAR)
    assert dataset.groups() == ["cifar10"] and len(dataset.classes) == 10 and dataset.num_images == 6000
    units = dataset.split_units()
    assert units[0] == "cifar10/airplane" and len(units) == 10
    split = split_groups(units, holdout=4, val=0, seed=0)
    train, test = dataset.subset(split.train), dataset.subset(split.test)
    assert len(train.classes) == 6 and len(test.classes) == 4
    assert not {c.name for c in train.classes} & {c.name for c in test.classes}


def test_imagenet_preset_is_torchvisions_documented_transform():
    spec = PreprocessSpec.from_dict(PRESETS["imagenet"])
    assert (spec.size, math.floor(spec.size / spec.crop_fraction)) == (224, 256)
    assert spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD and not spec.invert
