"""The preprocessing spec: the exact steps from a decoded image to the network's input, serialisable into a bundle."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from metaedge.errors import DataError

# Resampling filters by name, so the spec stays plain JSON.
_RESAMPLE = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}
_RESIZE = ("plain", "shorter_crop")
_ORDERS = {1: ("L",), 3: ("RGB", "BGR")}
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

# The ImageNet evaluation transform torchvision and timm document for their pretrained networks: the shorter
# side to 256 (224 / 0.875), a 224x224 centre crop, the ImageNet training set's per-channel mean and std.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PRESETS: dict[str, dict] = {
    "imagenet": {"channels": 3, "size": 224, "invert": False, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                 "resample": "bilinear", "resize_mode": "shorter_crop", "crop_fraction": 0.875},
    # Photos already about square and small (CIFAR's 32x32): the whole frame, stretched to size x size.
    "rgb": {"channels": 3, "invert": False, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "resample": "bilinear", "resize_mode": "plain"},
}  # fmt: skip


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a float tensor of shape (channels, size, size).

    Steps, in order: turn the image upright by its EXIF orientation; flatten any transparency onto white (as
    images.open_image does: a drawing on a transparent background is meant to be seen on white); convert to
    grayscale ("L") or RGB; resize with `resample`,
    either `resize_mode="plain"` to size x size, or `"shorter_crop"`: the shorter side to floor(size / crop_fraction),
    the other in proportion, then the centre size x size crop (torchvision's Resize + CenterCrop, pixel for
    pixel); scale to [0, 1]; if `invert`, x -> 1 - x (Omniglot draws black ink on white: inverting makes ink
    the high value, so zero padding and max-pooling see background as zero); then (x - mean) / std per channel,
    the channels in `channel_order` ("L"; "RGB", or "BGR" for networks trained on OpenCV's order).
    """

    channels: int = 1
    size: int = 28
    invert: bool = True
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resample: str = "box"
    resize_mode: str = "plain"
    crop_fraction: float = 1.0
    channel_order: str = ""  # "": "L" for one channel, "RGB" for three

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DataError(f"preprocessing: channels must be 1 or 3, got {self.channels}")
        if self.size < 8:
            raise DataError(f"preprocessing: size must be at least 8, got {self.size}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(
                f"preprocessing: mean and std need {self.channels} value(s) each, got {self.mean} and {self.std}"
            )
        if any(s <= 0 for s in self.std):
            raise DataError(f"preprocessing: std must be positive, got {self.std}")
        if self.resample not in _RESAMPLE:
            raise DataError(f"preprocessing: resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")
        if self.resize_mode not in _RESIZE:
            raise DataError(f"preprocessing: resize_mode must be one of {list(_RESIZE)}, got {self.resize_mode!r}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise DataError(f"preprocessing: crop_fraction must be in (0, 1], got {self.crop_fraction}")
        order = self.channel_order or _ORDERS[self.channels][0]
        if order not in _ORDERS[self.channels]:
            raise DataError(f"preprocessing: channel_order for {self.channels} channel(s) must be one of "
                            f"{list(_ORDERS[self.channels])}, got {self.channel_order!r}")  # fmt: skip
        object.__setattr__(self, "channel_order", order)
        # Tuples, not lists, whatever the caller passed: the spec is hashable and used as a cache key.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise DataError(f"preprocessing: unknown key(s) {sorted(unknown)}; valid keys are {sorted(known)}")
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def resize(self, image: Image.Image) -> np.ndarray:
        """Orientation, transparency, colour conversion, resize and crop: uint8 array (channels, size, size).

        The one path every image takes, in training, evaluation, export checks and on the device.
        """
        image = _flatten(_upright(image))
        if image.mode != self.mode:  # convert() to the same mode is a copy
            image = image.convert(self.mode)
        filt = _RESAMPLE[self.resample]
        if self.resize_mode == "plain":
            if image.size != (self.size, self.size):
                image = image.resize((self.size, self.size), filt)
        else:
            image = _centre_crop(_resize_shorter(image, math.floor(self.size / self.crop_fraction), filt), self.size)
        arr = np.asarray(image, dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return arr[::-1].copy() if self.channel_order == "BGR" else arr

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (..., channels, size, size) from `resize` -> float32 network input of the same shape."""
        if pixels.dtype != np.uint8:
            return self._arithmetic(pixels)
        # One table lookup instead of four passes over the pixels (with the two changes in images.py and
        # `resize`, 11-12% of the device's per-image preprocessing at 28x28). The table holds `_arithmetic`'s
        # own results, so the two agree bit for bit.
        if self.channels == 1:
            return self._table[0][pixels]
        return self._table[np.arange(self.channels)[:, None, None], pixels]

    @functools.cached_property
    def _table(self) -> np.ndarray:
        """float32 (channels, 256): the network input of each uint8 level in each channel."""
        levels = np.broadcast_to(np.arange(256, dtype=np.uint8), (self.channels, 1, 256))
        return np.ascontiguousarray(self._arithmetic(levels)[:, 0, :])

    def _arithmetic(self, pixels: np.ndarray) -> np.ndarray:
        x = pixels.astype(np.float32) / 255.0
        if self.invert:
            x = 1.0 - x
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return (x - mean) / std

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> float32 array of shape (channels, size, size)."""
        return self.normalize(self.resize(image))


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag: a phone photo taken sideways is stored sideways with a tag saying so."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) in (None, 1):
        return image  # no copy: most images (every PNG of a dataset) have nothing to turn
    return ImageOps.exif_transpose(image)


def _flatten(image: Image.Image) -> Image.Image:
    """Transparent pixels onto white; `convert` alone would keep whatever colour they hide (often black)."""
    if image.mode not in _ALPHA_MODES and not (image.mode == "P" and "transparency" in image.info):
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def _resize_shorter(image: Image.Image, side: int, resample: int) -> Image.Image:
    """The shorter side to `side`, the longer in proportion, rounded down as torchvision's Resize(int) does."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(side * long / short)
    size = (side, new_long) if w <= h else (new_long, side)
    return image if size == (w, h) else image.resize(size, resample)


def _centre_crop(image: Image.Image, size: int) -> Image.Image:
    """The centre size x size square, offsets rounded as torchvision's CenterCrop does (Python's round)."""
    w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def preprocess_settings(value: str) -> dict:
    """A preset name (see PRESETS) or a JSON file of PreprocessSpec keys -> those keys, checked."""
    if value in PRESETS:
        return dict(PRESETS[value])
    path = Path(value)
    if not path.is_file():
        raise DataError(f"--preprocess {value!r}: neither a preset ({', '.join(sorted(PRESETS))}) nor a JSON file")
    try:
        settings = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(settings, dict):
        raise DataError(f"{path}: a preprocessing file holds one JSON object of PreprocessSpec keys")
    PreprocessSpec.from_dict({"size": 224, **settings})  # refuses unknown keys and bad values now, naming them
    return settings
