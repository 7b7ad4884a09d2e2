"""Decode images handed to the runtime (paths, bytes, PIL images, arrays) safely, or say which one is bad."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from metaedge.data.preprocess import PreprocessSpec
from metaedge.errors import DataError

# A camera frame is at most a few tens of megapixels; anything larger is a decompression bomb or a mistake,
# and decoding it would exhaust a small board's memory before any check could run.
MAX_PIXELS = 40_000_000

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray


def describe(image: ImageInput, index: int) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return f"image #{index} ({type(image).__name__})"


def open_image(image: ImageInput, index: int = 0) -> Image.Image:
    """Any accepted input -> a fully decoded PIL image, or DataError naming the input and the problem."""
    where = describe(image, index)
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return _from_array(image, where)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise DataError(f"{where}: no such file")
        data = path.read_bytes()
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    else:
        raise DataError(f"{where}: unsupported input type; pass a path, bytes, a PIL image or a numpy array")
    if not data:
        raise DataError(f"{where}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise DataError(
                    f"{where}: {img.width}x{img.height} pixels is over the {MAX_PIXELS:,}-pixel limit "
                    "(decompression bomb or wrong file)"
                )
            img.load()
    except DataError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: over the {MAX_PIXELS:,}-pixel limit (decompression bomb?): {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where}: not a readable image ({e})") from None
    return img


def _from_array(arr: np.ndarray, where: str) -> Image.Image:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) arrays, uint8 or float in [0, 1]."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or min(arr.shape[:2]) < 1:
        raise DataError(f"{where}: array of shape {arr.shape} is not an image; expected (H, W) or (H, W, 3|4)")
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise DataError(f"{where}: {arr.shape[1]}x{arr.shape[0]} pixels is over the {MAX_PIXELS:,}-pixel limit")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise DataError(f"{where}: array must be uint8, or float with finite values in [0, 1]; got {arr.dtype}")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def preprocess(images: list[ImageInput], spec: PreprocessSpec) -> np.ndarray:
    """Decode and preprocess a list of inputs -> float32 (N, channels, size, size), exactly as in training."""
    if not images:
        raise DataError("no images given")
    return np.stack([spec(open_image(image, i)) for i, image in enumerate(images)])
