"""The preprocessing spec: the exact steps from a decoded image to the network's input, serialisable into a bundle."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from PIL import Image

from metaedge.errors import DataError

# Resampling filters by name, so the spec stays plain JSON.
_RESAMPLE = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes a float tensor of shape (channels, size, size).

    Steps, in order: convert to grayscale ("L") or RGB; resize to size x size with `resample`;
    scale to [0, 1]; if `invert`, x -> 1 - x (Omniglot draws black ink on white: inverting makes ink
    the high value, so zero padding and max-pooling see background as zero); then (x - mean) / std per channel.
    """

    channels: int = 1
    size: int = 28
    invert: bool = True
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resample: str = "box"

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
        """Colour conversion and resize only: uint8 array of shape (channels, size, size)."""
        image = image.convert(self.mode)
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), _RESAMPLE[self.resample])
        arr = np.asarray(image, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (..., channels, size, size) from `resize` -> float32 network input of the same shape."""
        x = pixels.astype(np.float32) / 255.0
        if self.invert:
            x = 1.0 - x
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return (x - mean) / std

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> float32 array of shape (channels, size, size)."""
        return self.normalize(self.resize(image))
