"""Few-shot image datasets: classes of images, grouped (Omniglot alphabets), merged from several roots."""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from metaedge.data.preprocess import PreprocessSpec
from metaedge.data.sources import Source
from metaedge.data.strokes import StrokeIndex, parse_strokes, render_variants, variant_seed
from metaedge.errors import DataError

# Omniglot names files `<character id>_<drawer>.png`; the trailing number is the person who drew it.
_DRAWER = re.compile(r"_(\d+)$")


@dataclass(frozen=True)
class ImageRef:
    """One image file: which root it lives in, its path inside the root, and who drew it (None if unknown)."""

    source: int
    member: str
    drawer: int | None


@dataclass(frozen=True)
class ClassInfo:
    """One class: its group (alphabet), its name, its images; `rotation` k means every image turned k x 90 degrees,
    `flip` that it is then mirrored left to right."""

    group: str
    name: str
    images: tuple[ImageRef, ...]
    rotation: int = 0
    flip: bool = False

    @property
    def key(self) -> str:
        base = f"{self.group}/{self.name}"
        base = base if self.rotation == 0 else f"{base}@rot{90 * self.rotation}"
        return f"{base}@flip" if self.flip else base


@dataclass
class ImageDataset:
    """A list of classes over one or more roots. Cheap to subset; pixels are decoded by `load`."""

    sources: list[Source]
    classes: list[ClassInfo]
    skipped: int = 0
    duplicates: list[str] = field(default_factory=list)

    def groups(self) -> list[str]:
        return sorted({c.group for c in self.classes})

    def split_units(self) -> list[str]:
        """What a train/test split divides: the groups, or where there is only one group (a `class/image`
        layout such as CIFAR's) the classes themselves, by key (`group/class`), so held-out classes stay unseen."""
        groups = self.groups()
        return groups if len(groups) > 1 else sorted(c.key for c in self.classes)

    def subset(self, groups: Iterable[str]) -> ImageDataset:
        """The classes of the named groups, or of the named class keys (`group/class`, see `split_units`)."""
        wanted = set(groups)
        keys = {c.key for c in self.classes}
        unknown = wanted - set(self.groups()) - keys
        if unknown:
            raise DataError(f"unknown group(s) {sorted(unknown)}; this dataset has {self.groups()}")
        return replace(self, classes=[c for c in self.classes if c.group in wanted or c.key in wanted])

    def with_rotations(self, rotations: Sequence[int] = (0, 1, 2, 3), flips: bool = False) -> ImageDataset:
        """Class augmentation: each k x 90 degree rotation of a class becomes a class of its own, and with `flips`
        each mirror image of those too (the 8 symmetries of the square: a mirrored character is another character).
        """
        mirrors = (False, True) if flips else (False,)
        classes = [replace(c, rotation=k, flip=f) for c in self.classes if c.rotation == 0 and not c.flip
                   for k in rotations for f in mirrors]  # fmt: skip
        return replace(self, classes=classes)

    @property
    def num_images(self) -> int:
        return sum(len(c.images) for c in self.classes)

    def summary(self) -> dict:
        """What a checkpoint records about its training data."""
        return {
            "roots": [str(s.path) for s in self.sources],
            "groups": self.groups(),
            "classes": len(self.classes),
            "images": self.num_images,
            "duplicate_classes_dropped": len(self.duplicates),
        }

    def load(
        self, spec: PreprocessSpec, strokes: StrokeIndex | None = None, stroke_variants: int = 0, seed: int = 0
    ) -> LoadedDataset:
        """Decode every image once, resized by `spec`: raises DataError naming the first corrupt file.

        With `strokes` and `stroke_variants` > 0, each image is followed by that many re-renderings of its
        pen trajectory (data/strokes.py), of the same class and drawer; an image without a stroke file is an error.
        """
        cache: dict[ImageRef, np.ndarray] = {}
        pixels, labels, drawers = [], [], []
        for index, cls in enumerate(self.classes):
            for ref in cls.images:
                arr = cache.get(ref)
                if arr is None:
                    arr = cache[ref] = self._decode_with_variants(ref, spec, strokes, stroke_variants, seed)
                out = np.rot90(arr, cls.rotation, axes=(2, 3)) if cls.rotation else arr
                out = out[:, :, :, ::-1] if cls.flip else out
                pixels.extend(out)
                labels.extend([index] * len(out))
                drawers.extend([-1 if ref.drawer is None else ref.drawer] * len(out))
        if not pixels:
            raise DataError("the dataset has no images")
        return LoadedDataset(
            pixels=np.ascontiguousarray(np.stack(pixels)),
            labels=np.asarray(labels, dtype=np.int64),
            drawers=np.asarray(drawers, dtype=np.int64),
            class_groups=[c.group for c in self.classes],
            class_keys=[c.key for c in self.classes],
            spec=spec,
        )

    def _decode_with_variants(self, ref: ImageRef, spec, strokes, variants: int, seed: int) -> np.ndarray:
        """(1 + variants, C, S, S): the image, then its stroke re-renderings."""
        arr = decode(self.sources[ref.source], ref.member, spec)[None]
        if strokes is None or variants <= 0:
            return arr
        found = strokes.find(ref.member)
        if found is None:
            raise DataError(f"{self.sources[ref.source].describe(ref.member)}: no stroke file for this image")
        text, where = found
        rendered = render_variants(parse_strokes(text, where), variants, spec, variant_seed(ref.member, seed))
        return np.concatenate([arr, rendered])


@dataclass
class LoadedDataset:
    """Decoded images in memory.

    pixels: uint8 array of shape (num_images, channels, size, size), resized but not normalised.
    labels: int64 array of shape (num_images,), the class index of each image.
    drawers: int64 array of shape (num_images,), the drawer of each image, -1 where unknown.
    """

    pixels: np.ndarray
    labels: np.ndarray
    drawers: np.ndarray
    class_groups: list[str]
    class_keys: list[str]
    spec: PreprocessSpec

    @property
    def num_classes(self) -> int:
        return len(self.class_keys)


def decode(source: Source, member: str, spec: PreprocessSpec) -> np.ndarray:
    """One image file -> uint8 array of shape (channels, size, size), or DataError naming the file."""
    data = source.read(member)
    where = source.describe(member)
    if not data:
        raise DataError(f"{where}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # A DecompressionBombWarning becomes an error: a dataset image is never that large on purpose.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return spec.resize(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: not a readable image ({e})") from None


def open_dataset(roots: str | os.PathLike | Sequence[str | os.PathLike]) -> ImageDataset:
    """Index one or more roots (folders or zips) into one dataset.

    Layouts, detected per root: `group/class/image` (Omniglot) or `class/image` (the root's name is the group).
    A single wrapping folder, as zips often have, is looked through. A class that appears byte for byte in
    two roots (Omniglot's Greek and Latin are in both small background sets) counts once.
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    if not roots:
        raise DataError("no data roots given")
    sources = [Source(r) for r in roots]
    classes: list[ClassInfo] = []
    seen: dict[str, tuple[int, str]] = {}  # class key -> (index in `classes`, content hash)
    duplicates, skipped = [], 0
    for si, source in enumerate(sources):
        members, junk = source.members()
        skipped += junk
        if not members:
            raise DataError(f"{source.path}: no images found")
        for cls in _classes_of(si, source, members):
            key = cls.key
            if key in seen:
                first, first_hash = seen[key]
                if first_hash == "":  # hash the earlier copy only now that a collision makes it matter
                    first_hash = _content_hash(sources, classes[first])
                    seen[key] = (first, first_hash)
                if _content_hash(sources, cls) == first_hash:
                    duplicates.append(f"{source.describe(key)}")
                    continue
                # Same name, different pictures: two real classes; keep both apart by their root's name.
                cls = replace(cls, name=f"{cls.name}[{source.name}]")
                key = cls.key
            seen[key] = (len(classes), "")
            classes.append(cls)
    return ImageDataset(sources=sources, classes=classes, skipped=skipped, duplicates=duplicates)


def _classes_of(si: int, source: Source, members: list[str]) -> list[ClassInfo]:
    parts = [m.split("/") for m in members]
    # Look through wrapping folders shared by every member (a zip's top-level folder).
    while min(len(p) for p in parts) > 3 and len({p[0] for p in parts}) == 1:
        parts = [p[1:] for p in parts]
    depths = {len(p) for p in parts}
    if depths not in ({2}, {3}):
        raise DataError(
            f"{source.path}: mixed or unsupported layout (image depths {sorted(depths)}); "
            "expected group/class/image or class/image"
        )
    by_class: dict[tuple[str, str], list[ImageRef]] = {}
    for member, p in zip(members, parts):
        group, name = (p[0], p[1]) if len(p) == 3 else (source.name, p[0])
        match = _DRAWER.search(os.path.splitext(p[-1])[0])
        ref = ImageRef(si, member, int(match.group(1)) if match else None)
        by_class.setdefault((group, name), []).append(ref)
    return [ClassInfo(g, n, tuple(refs)) for (g, n), refs in sorted(by_class.items())]


def _content_hash(sources: list[Source], cls: ClassInfo) -> str:
    digests = sorted(hashlib.sha256(sources[r.source].read(r.member)).hexdigest() for r in cls.images)
    return hashlib.sha256("".join(digests).encode()).hexdigest()
