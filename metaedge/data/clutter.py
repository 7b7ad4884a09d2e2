"""Cluttered Omniglot: seeded scenes of warped, coloured characters, a reference by another drawer, the target's mask.

The recipe of Michaelis, Bethge and Ecker, "One-Shot Segmentation in Clutter" (ICML 2018; the generator is
dataset_utils.py in github.com/michaelisc/cluttered-omniglot), rebuilt from our own Omniglot files:

- scene: 96x96 RGB, black. A clutter level of N characters is N - 1 distractors pasted first, then the target
  last, so nothing ever covers it. Each character gets a random affine warp (rotation U(-20, 20) degrees,
  shear U(-10, 10) degrees, independent x and y scales 2^U(-1, 1)), is shrunk by 32/105, cropped to its
  ink's bounding box, given one random RGB colour and pasted at a uniform position fully inside the canvas.
  The target's mask is its own ink pixels.
- reference: the target's class drawn by ANOTHER drawer, 32x32, centred, rotation and shear as above, no
  scaling, its own random colour, black background.

Where we differ from the original, and why:
- Alphabets: the original trains on Omniglot's 30 background alphabets and tests on the 20 evaluation ones;
  we have the two small background sets, 8 alphabets, split by alphabet exactly as classification splits
  them (data/splits.py), so test alphabets are never seen in training.
- Drawers: the original's reference is the very drawing pasted into the scene (same drawer), and it keeps
  drawers 1-10 for training sets and 11-20 for evaluation. Here every episode splits the drawers in two
  random halves: the references come from one half, every character of the scene from the other, so the
  reference's drawer never appears in its scene.
- Distractors are of other classes than the target. The original draws them from all 964 classes, so a
  second copy of the target's class is rare; among our few dozen held-out classes it would be common and
  make the answer ambiguous.
- Warp and shrink are one nearest-neighbour resampling (the original warps, then resizes, each nearest
  on 1-bit images); the geometry drawn is the same. A warp that leaves no ink is drawn again (the original
  skips that distractor, so a scene could hold fewer characters than its level).
- Colours are uniform over 0..255 per channel; one-colour scenes (`one_colour=True`) draw every character
  and the reference white: the same scene, geometry and all, without colour as a cue.
- Scene `i` of a set depends only on (seed, clutter, i) and training episode `i` only on (seed, i): sets
  are reproducible without storing them and a resumed run draws exactly the episodes it would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from metaedge.data.dataset import ImageDataset
from metaedge.data.preprocess import PreprocessSpec
from metaedge.errors import DataError

SCENE_SIZE = 96
REFERENCE_SIZE = 32
GLYPH_SIZE = 105  # Omniglot's drawings are 105x105
SHRINK = 32 / 105
CLUTTER_LEVELS = (4, 8, 16, 32, 64, 128, 256)
MAX_ROTATION, MAX_SHEAR, MAX_LOG2_SCALE = 20.0, 10.0, 1.0
WHITE = np.array([255, 255, 255], dtype=np.uint8)
# Seeds of evaluation sets are kept apart from training's episode seeds, as classification's are.
EVAL_SEED_OFFSET = 1_000_003
_MAX_REDRAWS = 100


@dataclass
class Glyphs:
    """The ink of every drawing of some classes, at Omniglot's own resolution.

    ink: bool (num_images, 105, 105), True where the pen went.
    labels: int64 (num_images,), class index; drawers: int64 (num_images,), who drew it.
    table: int64 (num_classes, num_drawers), the image of class c by drawer `drawer_ids[d]`.
    """

    ink: np.ndarray
    labels: np.ndarray
    drawers: np.ndarray
    class_groups: list[str]
    class_keys: list[str]
    drawer_ids: np.ndarray
    table: np.ndarray

    @classmethod
    def from_dataset(cls, dataset: ImageDataset) -> Glyphs:
        """Decode every drawing of `dataset` (nearest-neighbour to 105x105, as 1-bit Omniglot files already are).

        Raises DataError unless every class is drawn once by each of the same drawers (Omniglot: 20), which
        the split of drawers between reference and scene relies on.
        """
        loaded = dataset.load(PreprocessSpec(channels=1, size=GLYPH_SIZE, invert=False, resample="nearest"))
        if (loaded.drawers < 0).any():
            raise DataError("cluttered scenes need the drawer of every image (file names ending in _<drawer>)")
        drawer_ids = np.unique(loaded.drawers)
        if len(drawer_ids) < 2:
            raise DataError(f"cluttered scenes need at least two drawers per class, found {len(drawer_ids)}")
        table = np.full((loaded.num_classes, len(drawer_ids)), -1, dtype=np.int64)
        table[loaded.labels, np.searchsorted(drawer_ids, loaded.drawers)] = np.arange(len(loaded.labels))
        if (table < 0).any():
            c = int(np.flatnonzero((table < 0).any(axis=1))[0])
            raise DataError(f"class {loaded.class_keys[c]} lacks drawings by some drawers; cluttered scenes need "
                            f"every class drawn by each of {len(drawer_ids)} drawers")  # fmt: skip
        return cls(
            ink=loaded.pixels[:, 0] < 128,  # black ink on white paper
            labels=loaded.labels, drawers=loaded.drawers, class_groups=loaded.class_groups,
            class_keys=loaded.class_keys, drawer_ids=drawer_ids, table=table,
        )  # fmt: skip

    @property
    def num_classes(self) -> int:
        return len(self.class_keys)

    def image(self, index: int) -> Image.Image:
        """Drawing `index` as a mode "L" image, ink 255 on 0, cached: PIL warps it without a copy each time."""
        cache = self.__dict__.setdefault("_images", {})
        if index not in cache:
            cache[index] = Image.fromarray(self.ink[index].astype(np.uint8) * 255)
        return cache[index]


@dataclass
class ClutterScene:
    """One episode of one-shot segmentation.

    scene: uint8 (3, 96, 96), RGB on black. mask: bool (96, 96), the target's pixels (all False when absent).
    references: uint8 (shot, 3, 32, 32), the target's class by `shot` drawers none of whose drawings is in
    the scene. target_class: index into the Glyphs' classes. clutter: characters in the scene.
    """

    scene: np.ndarray
    mask: np.ndarray
    references: np.ndarray
    target_class: int
    clutter: int
    present: bool = True
    reference_drawers: tuple[int, ...] = ()  # who drew each reference
    scene_drawers: tuple[int, ...] = ()  # who drew each character of the scene, in pasting order
    scene_classes: tuple[int, ...] = ()  # the class of each character of the scene, in pasting order


def warp_glyph(image: Image.Image, rng: np.random.Generator, scaled: bool = True) -> np.ndarray | None:
    """A random affine warp of one drawing, shrunk by 32/105 and cropped to its ink -> bool (h, w), or None
    when nothing of the ink survives (a thin drawing shrunk far).

    The warp is the original's: rotation phi and shear theta act as [[cos(phi+theta), sin(phi-theta)],
    [-sin(phi+theta), cos(phi-theta)]] on the drawing scaled by (a, b), a and b = 2^U(-1, 1) when `scaled`.
    """
    phi = math.radians(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    theta = math.radians(rng.uniform(-MAX_SHEAR, MAX_SHEAR))
    a, b = (2.0 ** rng.uniform(-MAX_LOG2_SCALE, MAX_LOG2_SCALE) for _ in range(2))
    if not scaled:
        a = b = 1.0
    forward = np.array([[a * math.cos(phi + theta), b * math.sin(phi - theta)],
                        [-a * math.sin(phi + theta), b * math.cos(phi - theta)]])  # fmt: skip
    w, h = image.size
    corners = forward @ np.array([[0, 0, w, w], [0, h, 0, h]], dtype=np.float64)
    low, high = corners.min(axis=1), corners.max(axis=1)
    out_w, out_h = (int(SHRINK * (high[i] - low[i])) for i in range(2))
    if out_w < 1 or out_h < 1:
        return None
    # PIL wants the inverse map, output pixel -> input pixel: p = F^-1 (out / s + low).
    inverse = np.linalg.inv(forward)
    matrix = inverse / SHRINK
    offset = inverse @ low
    data = (matrix[0, 0], matrix[0, 1], offset[0], matrix[1, 0], matrix[1, 1], offset[1])
    warped = np.asarray(image.transform((out_w, out_h), Image.Transform.AFFINE, data, Image.Resampling.NEAREST)) > 127
    rows, cols = np.flatnonzero(warped.any(axis=1)), np.flatnonzero(warped.any(axis=0))
    if len(rows) == 0:
        return None
    return warped[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _colour(rng: np.random.Generator, one_colour: bool) -> np.ndarray:
    # Drawn even in one-colour scenes, so both variants of a seeded scene have the same geometry.
    colour = rng.integers(0, 256, size=3).astype(np.uint8)
    return WHITE if one_colour else colour


def _warped(glyphs: Glyphs, index: int, rng: np.random.Generator, scaled: bool, limit: int) -> np.ndarray:
    for _ in range(_MAX_REDRAWS):
        ink = warp_glyph(glyphs.image(index), rng, scaled)
        if ink is not None and ink.shape[0] <= limit and ink.shape[1] <= limit:
            return ink
    raise DataError(f"drawing {glyphs.class_keys[glyphs.labels[index]]} (image {index}) keeps warping to nothing")


def make_scene(
    glyphs: Glyphs, rng: np.random.Generator, *, clutter: int, shot: int = 1, one_colour: bool = False,
    present: bool = True,
) -> ClutterScene:  # fmt: skip
    """One seeded scene: everything it draws comes from `rng`.

    present=False puts a character of another class where the target would be (the original's "empty"
    scenes): the mask is empty and the references name a class absent from the scene.
    """
    if clutter < 1:
        raise DataError(f"a scene needs at least one character, not clutter {clutter}")
    if glyphs.num_classes < 2:
        raise DataError("cluttered scenes need at least two classes (the target and others)")
    n_drawers = len(glyphs.drawer_ids)
    if shot < 1 or shot > n_drawers // 2:
        raise DataError(f"shot must be 1..{n_drawers // 2} (half of the {n_drawers} drawers), not {shot}")
    order = rng.permutation(n_drawers)
    reference_drawers, scene_drawers = order[: n_drawers // 2], order[n_drawers // 2 :]
    target = int(rng.integers(glyphs.num_classes))
    others = lambda: (target + 1 + int(rng.integers(glyphs.num_classes - 1))) % glyphs.num_classes  # noqa: E731

    scene = np.zeros((3, SCENE_SIZE, SCENE_SIZE), dtype=np.uint8)
    mask = np.zeros((SCENE_SIZE, SCENE_SIZE), dtype=bool)
    used: list[int] = []
    classes: list[int] = []
    for j in range(clutter):
        last = j == clutter - 1
        cls = target if last and present else others()
        index = int(glyphs.table[cls, scene_drawers[rng.integers(len(scene_drawers))]])
        used.append(int(glyphs.drawers[index]))
        classes.append(cls)
        ink = _warped(glyphs, index, rng, scaled=True, limit=SCENE_SIZE)
        colour = _colour(rng, one_colour)
        h, w = ink.shape
        y, x = int(rng.integers(SCENE_SIZE - h + 1)), int(rng.integers(SCENE_SIZE - w + 1))
        scene[:, y : y + h, x : x + w][:, ink] = colour[:, None]
        if last and present:
            mask[y : y + h, x : x + w] = ink

    references = np.zeros((shot, 3, REFERENCE_SIZE, REFERENCE_SIZE), dtype=np.uint8)
    chosen = rng.choice(reference_drawers, size=shot, replace=False)
    for k, d in enumerate(chosen):
        ink = _warped(glyphs, int(glyphs.table[target, d]), rng, scaled=False, limit=GLYPH_SIZE)
        colour = _colour(rng, one_colour)
        _paste_centred(references[k], ink, colour)
    return ClutterScene(scene, mask, references, target, clutter, present,
                        tuple(int(glyphs.drawer_ids[d]) for d in chosen), tuple(used), tuple(classes))  # fmt: skip


def _paste_centred(canvas: np.ndarray, ink: np.ndarray, colour: np.ndarray) -> None:
    """Centre `ink` on `canvas` (3, S, S); a character larger than the canvas loses its edges, as the original's
    PIL paste at a negative offset does."""
    size = canvas.shape[1]
    h, w = ink.shape
    top, left = (size - h) // 2, (size - w) // 2
    src = ink[max(0, -top) : max(0, -top) + min(h, size), max(0, -left) : max(0, -left) + min(w, size)]
    y, x = max(0, top), max(0, left)
    canvas[:, y : y + src.shape[0], x : x + src.shape[1]][:, src] = colour[:, None]


@dataclass
class SceneBatch:
    """Scenes stacked: scenes uint8 (B, 3, 96, 96), masks bool (B, 96, 96), references uint8 (B, shot, 3, 32, 32),
    clutter int64 (B,), present bool (B,)."""

    scenes: np.ndarray
    masks: np.ndarray
    references: np.ndarray
    clutter: np.ndarray
    present: np.ndarray

    @classmethod
    def stack(cls, scenes: list[ClutterScene]) -> SceneBatch:
        return cls(
            scenes=np.stack([s.scene for s in scenes]), masks=np.stack([s.mask for s in scenes]),
            references=np.stack([s.references for s in scenes]),
            clutter=np.array([s.clutter for s in scenes], dtype=np.int64),
            present=np.array([s.present for s in scenes], dtype=bool),
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.scenes)


class ClutterEpisodes:
    """Training episodes generated on the fly: episode `i` depends only on (seed, i).

    Each draws its clutter level uniformly from `clutter`, is one-colour with probability `one_colour`,
    and (with probability `absent`) holds no character of the references' class.
    """

    def __init__(self, glyphs: Glyphs, clutter: tuple[int, ...] | list[int], *, shot: int = 1,
                 one_colour: float = 0.0, absent: float = 0.0, seed: int = 0) -> None:  # fmt: skip
        if not clutter:
            raise DataError("name at least one clutter level")
        if not 0.0 <= one_colour <= 1.0 or not 0.0 <= absent <= 1.0:
            raise DataError(f"one_colour and absent are fractions in [0, 1], not {one_colour} and {absent}")
        self.glyphs, self.clutter, self.shot = glyphs, tuple(int(c) for c in clutter), shot
        self.one_colour, self.absent, self.seed = one_colour, absent, seed

    def episode(self, index: int) -> ClutterScene:
        rng = np.random.default_rng([self.seed, index])
        clutter = self.clutter[int(rng.integers(len(self.clutter)))]
        one_colour = bool(rng.random() < self.one_colour)
        present = bool(rng.random() >= self.absent)
        return make_scene(self.glyphs, rng, clutter=clutter, shot=self.shot, one_colour=one_colour, present=present)

    def batch(self, indices) -> SceneBatch:
        return SceneBatch.stack([self.episode(int(i)) for i in indices])


GLYPH_CANVAS = 64  # the largest warped character of a scene (2x the reference's 32 px) fits


def glyph_batch(glyphs: Glyphs, indices, rng: np.random.Generator, *, one_colour: float = 0.0,
                canvas: int = GLYPH_CANVAS) -> np.ndarray:  # fmt: skip
    """Isolated characters for classifier pre-training: drawing `indices[i]` warped as a scene's characters are
    (scale included), in a random colour (white with probability `one_colour`), at a uniform place on a black
    `canvas` x `canvas` -> uint8 (len(indices), 3, canvas, canvas). Everything drawn comes from `rng`."""
    out = np.zeros((len(indices), 3, canvas, canvas), dtype=np.uint8)
    for i, index in enumerate(indices):
        ink = _warped(glyphs, int(index), rng, scaled=True, limit=canvas)
        colour = _colour(rng, bool(rng.random() < one_colour))
        h, w = ink.shape
        y, x = int(rng.integers(canvas - h + 1)), int(rng.integers(canvas - w + 1))
        out[i, :, y : y + h, x : x + w][:, ink] = colour[:, None]
    return out


def scene_set(
    glyphs: Glyphs, *, clutter: int, count: int, seed: int = 0, shot: int = 1, one_colour: bool = False,
    present: bool = True, start: int = 0,
) -> SceneBatch:  # fmt: skip
    """A fixed evaluation set: scene i is a function of (seed, clutter, i) alone, so the one-colour set is the
    coloured one with every character white, and scenes start..start+count-1 are those of a longer set."""
    if count < 1:
        raise DataError(f"a scene set needs at least one scene, not {count}")
    rng_of = lambda i: np.random.default_rng([seed + EVAL_SEED_OFFSET, clutter, int(present), i])  # noqa: E731
    return SceneBatch.stack([
        make_scene(glyphs, rng_of(i), clutter=clutter, shot=shot, one_colour=one_colour, present=present)
        for i in range(start, start + count)
    ])  # fmt: skip


def parse_clutter(text: str) -> list[int]:
    """"4,32" -> [4, 32]: clutter levels as the CLI takes them; DataError names anything else."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DataError(f"clutter levels are comma-separated numbers of characters, like 4,32; not {text!r}") from None
    if not levels or any(c < 1 for c in levels):
        raise DataError(f"clutter levels are positive numbers of characters, like 4,32; not {text!r}")
    return levels
