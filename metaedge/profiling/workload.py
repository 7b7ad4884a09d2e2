"""The inputs every stage works on: real images grouped by class, decoded, preprocessed and embedded once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaedge.data.preprocess import PreprocessSpec
from metaedge.images import preprocess
from metaedge.ort import run_batched
from metaedge.profiling.config import ProfileError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
ROTATION = 16  # distinct inputs a figure cycles through: no call sees the input of the call before it


@dataclass
class Workload:
    """Real images of `len(classes)` classes and what the stages need of them.

    classes: per class, its image paths (sorted; the first `shots` are a support set, the rest queries).
    paths: every image, class by class; index i of `pixels` and `embeddings` belongs to paths[i].
    pixels: float32 (N, C, H, W), every image preprocessed with the bundle's spec.
    embeddings: float32 (N, D), pixels through the bundle's backbone.
    """

    classes: list[list[Path]]
    paths: list[Path]
    pixels: np.ndarray
    embeddings: np.ndarray

    def index(self, c: int, k: int) -> int:
        return sum(len(cls) for cls in self.classes[:c]) + k

    def support(self, ways: int, shots: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The first `shots` images of `ways` classes from class `offset` on (wrapping around):
        embeddings float32 (ways*shots, D), labels int64 (ways*shots,) in [0, ways), class by class."""
        n = len(self.classes)
        rows = [self.index((offset + c) % n, k) for c in range(ways) for k in range(shots)]
        return np.ascontiguousarray(self.embeddings[rows]), np.repeat(np.arange(ways, dtype=np.int64), shots)

    def query_paths(self, ways: int, shots: int) -> list[Path]:
        """Images of the first `ways` classes that are not in their support sets."""
        return [p for cls in self.classes[:ways] for p in cls[shots:]]

    def batches(self, batch: int, of: str = "paths") -> list:
        """ROTATION consecutive batches of `batch` items of `paths`, `pixels` or `embeddings`, wrapping around.
        Arrays come back contiguous, so a timed call pays for no gather."""
        n = len(self.paths)
        out = []
        for r in range(ROTATION):
            rows = [(r * batch + j) % n for j in range(batch)]
            out.append(
                [self.paths[i] for i in rows] if of == "paths" else np.ascontiguousarray(getattr(self, of)[rows])
            )
        return out


def load(samples: Path, spec: PreprocessSpec, session, max_batch: int, ways: int, shots: int) -> Workload:
    """Read every image under `samples` (a folder of class folders), preprocess and embed them with `session`.

    ways, shots: the largest episode asked for; there must be that many classes, and more images per class
    than shots (the rest are the queries).
    """
    if not samples.is_dir():
        raise ProfileError(f"{samples}: no such folder of sample images")
    classes = []
    for folder in sorted(p for p in samples.iterdir() if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            classes.append(images)
    if len(classes) < ways:
        raise ProfileError(f"--ways {ways}: {samples} has only {len(classes)} classes of images")
    fewest = min(len(c) for c in classes)
    if shots >= fewest:
        raise ProfileError(f"--shots {shots}: the classes of {samples} have {fewest} images each; "
                           f"shots must leave at least one to classify (at most {fewest - 1})")  # fmt: skip
    paths = [p for cls in classes for p in cls]
    pixels = preprocess(list(paths), spec)
    return Workload(classes, paths, pixels, run_batched(session, pixels, max_batch))
