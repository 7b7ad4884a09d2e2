"""Shared fixtures: small image datasets made on the fly, and the real Omniglot sets beside the checkout."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
OMNIGLOT_ZIPS = [OMNIGLOT / "images_background_small1.zip", OMNIGLOT / "images_background_small2.zip"]


def png_bytes(seed: int, size: int = 32) -> bytes:
    """A random black-and-white PNG, different for every seed."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((size, size)) > 0.5).astype(np.uint8) * 255).convert("1")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def make_tree(files: dict[str, bytes], root: Path) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def make_zip(files: dict[str, bytes], path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def omniglot_like(groups: dict[str, int], drawers: int = 4, seed0: int = 0) -> dict[str, bytes]:
    """`group/characterNN/<id>_<drawer>.png` files: `groups` maps a group name to its number of classes."""
    files, seed = {}, seed0
    for group, classes in groups.items():
        for c in range(1, classes + 1):
            for d in range(1, drawers + 1):
                files[f"{group}/character{c:02d}/{1000 + c:04d}_{d:02d}.png"] = png_bytes(seed)
                seed += 1
    return files


@pytest.fixture
def omniglot_zips() -> list[Path]:
    if not all(p.is_file() for p in OMNIGLOT_ZIPS):
        pytest.skip(f"the shared Omniglot data is not at {OMNIGLOT}")
    return OMNIGLOT_ZIPS
