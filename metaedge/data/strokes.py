"""New drawings of the training characters, re-rendered from Omniglot's pen trajectories.

Omniglot ships, beside every image, the strokes it was drawn with (`strokes_background_*.zip`: one text file
per drawing, lines `x,y,t_ms`, `START`/`BREAK` between strokes, in the 105 x 105 image's pixel coordinates
with y pointing up). A scanned image fixes one pen width and one placement of each stroke; re-rendering the
strokes with a different pen, each stroke nudged on its own and its path wobbled smoothly, gives drawings the
same person might have made, which no warp of the whole image produces. Variants are rendered once, at load
time, as extra images of the same class and drawer, and go through exactly the preprocessing of a scan.

    sources = StrokeIndex(["strokes_background_small1.zip", ...])
    pixels = render_variants(sources.read(image_member), variants=3, spec=spec, seed=0)   # (3, C, S, S) uint8
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageDraw

from metaedge.data.preprocess import PreprocessSpec
from metaedge.data.sources import is_junk
from metaedge.errors import DataError

CANVAS = 105  # Omniglot's image side, the strokes' coordinate frame
SUPERSAMPLE = 4  # drawn 4x larger and reduced, so thin pens and sub-pixel nudges survive


@dataclass(frozen=True)
class StrokeJitter:
    """How far a re-rendering may stray from the recorded drawing (lengths in pixels of the 105-pixel canvas).

    pen: pen width range (the scans' pen is about 5 px); stroke_shift / stroke_degrees / stroke_scale: each
    stroke moved, turned and resized about its own centre; wobble: largest smooth displacement along a path.
    """

    pen: tuple[float, float] = (3.5, 7.0)
    stroke_shift: float = 3.0
    stroke_degrees: float = 8.0
    stroke_scale: tuple[float, float] = (0.9, 1.1)
    wobble: float = 1.5


def parse_strokes(text: str, where: str) -> list[np.ndarray]:
    """A stroke file -> its strokes, each a float array (points, 2) of (x, y) in image pixels, y down."""
    strokes: list[np.ndarray] = []
    current: list[tuple[float, float]] = []
    for line in text.splitlines():
        line = line.strip()
        if line in ("START", "BREAK", ""):
            if len(current) > 0:
                strokes.append(np.asarray(current, dtype=np.float64))
            current = []
            continue
        try:
            x, y, _ = (float(v) for v in line.split(","))
        except ValueError:
            raise DataError(f"{where}: not a stroke file (line {line[:40]!r})") from None
        current.append((x, -y))  # the files store y pointing up
    if current:
        strokes.append(np.asarray(current, dtype=np.float64))
    if not strokes:
        raise DataError(f"{where}: no strokes")
    return strokes


def _smooth_noise(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    """(n, 2) displacements: random at a few control points along the path, linearly interpolated between."""
    knots = max(2, n // 8)
    at = np.linspace(0, n - 1, knots)
    values = rng.uniform(-amplitude, amplitude, size=(knots, 2))
    return np.stack([np.interp(np.arange(n), at, values[:, k]) for k in range(2)], axis=1)


def render(strokes: Sequence[np.ndarray], rng: np.random.Generator | None, jitter: StrokeJitter) -> Image.Image:
    """One drawing as a 105 x 105 1-bit image like the scans (ink 0 on paper 1); rng None renders it as recorded."""
    big = Image.new("L", (CANVAS * SUPERSAMPLE, CANVAS * SUPERSAMPLE), 255)
    draw = ImageDraw.Draw(big)
    pen = 5.0 if rng is None else rng.uniform(*jitter.pen)
    width = max(1, round(pen * SUPERSAMPLE))
    for points in strokes:
        p = points.copy()
        if rng is not None:
            centre = p.mean(axis=0)
            a = np.radians(rng.uniform(-jitter.stroke_degrees, jitter.stroke_degrees))
            s = rng.uniform(*jitter.stroke_scale)
            turn = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            p = (p - centre) @ turn.T + centre + rng.uniform(-jitter.stroke_shift, jitter.stroke_shift, size=2)
            p = p + _smooth_noise(rng, len(p), jitter.wobble)
        xy = [tuple(q) for q in (p * SUPERSAMPLE)]
        if len(xy) == 1:  # a dot
            (x, y), r = xy[0], width / 2
            draw.ellipse([x - r, y - r, x + r, y + r], fill=0)
        else:
            draw.line(xy, fill=0, width=width, joint="curve")
            for x, y in (xy[0], xy[-1]):  # round pen ends, as a real pen leaves
                r = width / 2
                draw.ellipse([x - r, y - r, x + r, y + r], fill=0)
    # Reduced with a box filter and thresholded: a 1-bit image at the scans' resolution.
    small = big.resize((CANVAS, CANVAS), Image.Resampling.BOX)
    return small.point(lambda v: 255 if v >= 128 else 0).convert("1")


def render_variants(
    strokes: Sequence[np.ndarray], variants: int, spec: PreprocessSpec, seed: int, jitter: StrokeJitter | None = None
) -> np.ndarray:
    """`variants` jittered re-renderings of one drawing -> uint8 (variants, channels, size, size), as `spec.resize`."""
    jitter = jitter or StrokeJitter()
    rng = np.random.default_rng(seed)
    return np.stack([spec.resize(render(strokes, rng, jitter)) for _ in range(variants)])


class StrokeIndex:
    """Stroke files of one or more roots (folders or zips), found by the image they belong to.

    An image `<wrapper>/<alphabet>/<character>/<id>_<drawer>.png` matches the stroke file
    `<other wrapper>/<alphabet>/<character>/<id>_<drawer>.txt`: alphabet, character and file stem must agree.
    """

    def __init__(self, roots: Sequence[str | os.PathLike]) -> None:
        self._files: dict[tuple[str, str, str], tuple[Path, str]] = {}
        self._zips: dict[Path, zipfile.ZipFile] = {}
        for root in roots:
            root = Path(root)
            if root.is_file():
                try:
                    z = self._zips[root] = zipfile.ZipFile(root)
                except (zipfile.BadZipFile, OSError) as e:
                    raise DataError(f"{root}: not a readable zip of stroke files ({e})") from None
                names = [n for n in z.namelist() if n.endswith(".txt") and not is_junk(n)]
            elif root.is_dir():
                names = [p.relative_to(root).as_posix() for p in root.rglob("*.txt") if not is_junk(str(p))]
            else:
                raise DataError(f"{root}: no such stroke folder or zip")
            for name in names:
                key = self.key(name)
                if key is not None:
                    self._files.setdefault(key, (root, name))
        if not self._files:
            raise DataError(f"no stroke files (alphabet/character/<id>_<drawer>.txt) in {', '.join(map(str, roots))}")

    @staticmethod
    def key(member: str) -> tuple[str, str, str] | None:
        parts = PurePosixPath(member).parts
        if len(parts) < 3:
            return None
        return parts[-3], parts[-2], PurePosixPath(parts[-1]).stem

    def __len__(self) -> int:
        return len(self._files)

    def find(self, image_member: str) -> tuple[str, str] | None:
        """The stroke text and a readable location for the image at `image_member`, or None if there is none."""
        key = self.key(image_member)
        hit = None if key is None else self._files.get(key)
        if hit is None:
            return None
        root, name = hit
        z = self._zips.get(root)
        data = z.read(name) if z is not None else (root / name).read_bytes()
        return data.decode("utf-8", errors="replace"), f"{root}:{name}"


def variant_seed(member: str, seed: int) -> int:
    """A drawing's own seed: the same variants every run, whatever else is loaded."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{member}".encode()).digest()[:8], "little")
