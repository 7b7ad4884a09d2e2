"""Find enrolled classes in a scene: a localisation bundle's dense graphs, scored by the native kernels.

A localisation bundle (`task: "locate"`, written by metaedge/export_segment.py) holds three graphs:
- the manifest's `backbone` (prototype.onnx): a reference (batch, 3, 32, 32) -> its prototype (batch, D),
  by masked pooling; `Runtime.enroll` runs it as it runs a classification backbone, into the same gallery;
- `locate.dense` (dense.onnx): a scene (batch, 3, H, W) -> feature map (batch, D, H/s, W/s), s the stride;
- `locate.decoder` (decoder.onnx): (scene, feature map, cosine maps (batch, C, H/s, W/s)) -> mask logits
  (batch, C, H, W), C any number of classes.
Between the last two, the cosine similarity of every cell of the map to every prototype is `kernels.logits`
with the map's h*w cells as the queries.

Scene sizes: both scene graphs are fully convolutional (dynamic H and W), so a scene runs at its own
resolution, padded with black on the right and bottom to a multiple of the stride; the model sees characters
at the size it was trained on, wherever they are. A scene whose longer side is over `MAX_SIDE` is first
resized down to that side (aspect kept; characters shrink with it) and the masks are resized back, so every
mask is (H, W) in the scene's own pixels. Scenes under `MIN_SIDE` pixels a side are refused.

A class's score is the highest foreground probability of its mask over the scene (on the shipped bundle it
told scenes with the target from scenes without it a little better than the peak cosine similarity did);
`present` is that score at or over the bundle's threshold, calibrated at export on held-out scenes with and
without the class. The mask is that probability over 0.3 (Michaelis et al.'s foreground threshold), kept
whether or not the class is present.

Decoding only what could be present: the decoder's cost grows with the number of classes, the rest of the
path does not. A bundle exported with a `decode_floor` (the peak cosine similarity that 99% of the held-out
calibration scenes reach where their class is present and accepted) lets `locate` skip the decoder for a
class whose peak cosine in this scene is under it: that class is answered absent, score 0.0, empty mask.
The floor belongs to the bundle's threshold: with any other threshold (or None) every class is decoded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from metaedge import kernels
from metaedge.data.preprocess import PreprocessSpec
from metaedge.errors import DataError, MetaedgeError
from metaedge.images import ImageInput, describe, open_image
from metaedge.ort import create_session

TASK = "locate"
MIN_SIDE = 8
MAX_SIDE = 512
DENSE_INPUT, DENSE_OUTPUT = "scenes", "features"
DECODER_INPUTS, DECODER_OUTPUT = ("scenes", "features", "scores"), "logits"


class TaskError(MetaedgeError):
    """A bundle made for another task than the one asked of it (a classification bundle asked to locate)."""


def bundle_task(manifest: dict) -> str:
    """The task a bundle's manifest says it serves; bundles from before localisation are classification ones."""
    return manifest.get("task", "classify")


def require_task(bundle, task: str) -> None:
    """TaskError naming the bundle's own task unless it is `task`."""
    held = bundle_task(bundle.manifest)
    if held != task:
        verb = {"locate": "locate in scenes", "classify": "classify images"}.get(task, task)
        raise TaskError(f"{bundle.path}: a {held} bundle cannot {verb}; use a {task} bundle"
                        + (" (metaedge.reference.bundle_path('locate'))" if task == TASK else ""))  # fmt: skip


@dataclass
class Localization:
    """One enrolled class in one scene.

    score: the highest foreground probability of the class's mask in the scene; present: score at or over
    the threshold. mask: bool (H, W) in the scene's pixels. box: (x0, y0, x1, y1) ints, inclusive, from the
    mask, None when it is empty. center: (x, y), the mask's centre of mass, None when it is empty.
    """

    label: str
    score: float
    present: bool
    mask: np.ndarray
    box: tuple[int, int, int, int] | None
    center: tuple[float, float] | None

    @classmethod
    def from_mask(cls, label: str, score: float, present: bool, mask: np.ndarray) -> Localization:
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            return cls(label, score, present, mask, None, None)
        box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        return cls(label, score, present, mask, box, (float(xs.mean()), float(ys.mean())))

    @classmethod
    def from_masks(cls, labels: Sequence[str], scores: np.ndarray, present: np.ndarray,
                   masks: np.ndarray) -> list[Localization]:  # fmt: skip
        """`from_mask` for every class at once: masks bool (C, H, W), scores (C,), present bool (C,) -> C answers.
        The boxes and centres come from the masks' row and column sums, not from every pixel's coordinates."""
        c, h, w = masks.shape
        col_counts, row_counts = masks.sum(axis=1), masks.sum(axis=2)  # (C, W), (C, H)
        counts = col_counts.sum(axis=1)
        cols, rows = col_counts > 0, row_counts > 0
        x0, y0 = cols.argmax(axis=1), rows.argmax(axis=1)
        x1, y1 = w - 1 - cols[:, ::-1].argmax(axis=1), h - 1 - rows[:, ::-1].argmax(axis=1)
        cx = (col_counts @ np.arange(w, dtype=np.float64)) / np.maximum(counts, 1)
        cy = (row_counts @ np.arange(h, dtype=np.float64)) / np.maximum(counts, 1)
        return [cls(label, float(scores[i]), bool(present[i]), masks[i],
                    (int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i])) if counts[i] else None,
                    (float(cx[i]), float(cy[i])) if counts[i] else None) for i, label in enumerate(labels)]  # fmt: skip

    def to_dict(self) -> dict:
        return {"label": self.label, "score": self.score, "present": self.present,
                "box": list(self.box) if self.box else None, "center": list(self.center) if self.center else None,
                "mask": rle_encode(self.mask)}  # fmt: skip


def rle_encode(mask: np.ndarray) -> dict:
    """bool (H, W) -> COCO's uncompressed run-length encoding: {"size": [H, W], "counts": [...]}, runs of the
    column-major pixels, alternating background and foreground, starting with background (maybe 0)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    """The inverse of `rle_encode` -> bool (H, W)."""
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    flat = np.repeat(values, rle["counts"])
    if flat.size != h * w:
        raise DataError(f"run-length counts cover {flat.size} pixels, not {h}x{w}")
    return flat.reshape((h, w), order="F")


@dataclass
class PreparedScene:
    """A scene ready for the dense graph: pixels float32 (1, 3, Hp, Wp), Hp and Wp multiples of the stride;
    the scene's own size (H, W) and the size it was resized to before padding (Hr, Wr)."""

    pixels: np.ndarray
    size: tuple[int, int]
    resized: tuple[int, int]


def prepare_scene(scene: ImageInput, spec: PreprocessSpec, stride: int, index: int = 0,
                  max_side: int = MAX_SIDE) -> PreparedScene:  # fmt: skip
    """Decode one scene (safely: images.open_image refuses empty, unreadable, blank and over-limit inputs),
    resize it down if its longer side is over `max_side`, normalise it as training did, pad it with black."""
    img = ImageOps.exif_transpose(open_image(scene, index))
    img = img.convert("RGB" if spec.channels == 3 else "L")
    w, h = img.size
    if min(w, h) < MIN_SIDE:
        raise DataError(f"{describe(scene, index)}: a {w}x{h} scene is too small to locate anything in "
                        f"(at least {MIN_SIDE}x{MIN_SIDE} pixels)")  # fmt: skip
    rw, rh = w, h
    if max(w, h) > max_side:
        factor = max_side / max(w, h)
        rw, rh = max(MIN_SIDE, round(w * factor)), max(MIN_SIDE, round(h * factor))
        img = img.resize((rw, rh), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    x = spec.normalize(arr)
    ph, pw = -rh % stride, -rw % stride
    background = spec.normalize(np.zeros((x.shape[0], 1, 1), np.uint8))  # black, as training scenes' canvas
    padded = np.broadcast_to(background, (x.shape[0], rh + ph, rw + pw)).copy()
    padded[:, :rh, :rw] = x
    return PreparedScene(padded[None].astype(np.float32), (h, w), (rh, rw))


class Locator:
    """The dense half of a localisation bundle: scene -> feature map -> per-class cosine maps -> mask probabilities.

    dense, decoder: paths of dense.onnx and decoder.onnx; settings: the manifest's `locate` entry. threads: ONNX
    Runtime's intra-op threads; 0 (a target's "pick for me") means ONE here, not one per core: a 96x96 scene's
    graphs are too small to share out, and one per core (spinning between runs) measured 14.3 ms of CPU and
    32 ms p50 per locate of 20 classes against 3.7 ms and 11.7 ms on one thread (2-core machine under load).
    """

    def __init__(self, dense: str | os.PathLike, decoder: str | os.PathLike, settings: dict,
                 providers: Sequence[str] = ("CPUExecutionProvider",), threads: int = 0) -> None:  # fmt: skip
        self.settings = settings
        self.stride = int(settings["stride"])
        self.mask_threshold = float(settings["mask_threshold"])
        # The mask is probability > mask_threshold, i.e. logit > its logit: no sigmoid over every pixel.
        self.mask_logit = float(np.log(self.mask_threshold / (1.0 - self.mask_threshold)))
        self.decode_floor = settings.get("decode_floor")  # None: bundles from before it decode every class
        self.spec = PreprocessSpec.from_dict(settings["scene_preprocess"])
        self.threads = threads or 1
        self.dense = create_session(dense, tuple(providers), self.threads)
        self.decoder = create_session(decoder, tuple(providers), self.threads)

    def features(self, scenes: np.ndarray) -> np.ndarray:
        """scenes float32 (B, 3, H, W), H and W multiples of the stride -> feature maps float32 (B, D, H/s, W/s)."""
        return self.dense.run(None, {DENSE_INPUT: scenes})[0]

    @staticmethod
    def cosine(features: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
        """features (B, D, h, w), prototypes (C, D) -> cosine maps float32 (B, C, h, w), through kernels.logits:
        every cell of every map is one query."""
        b, d, h, w = features.shape
        queries = np.ascontiguousarray(features.transpose(0, 2, 3, 1).reshape(b * h * w, d))
        scores = kernels.logits(queries, prototypes, metric="cosine", scale=1.0)  # (B*h*w, C)
        return np.ascontiguousarray(scores.reshape(b, h, w, -1).transpose(0, 3, 1, 2))

    def logits(self, scenes: np.ndarray, features: np.ndarray, cosine: np.ndarray) -> np.ndarray:
        """(scenes (B, 3, H, W), features (B, D, h, w), cosine (B, C, h, w)) -> mask logits float32 (B, C, H, W)."""
        feeds = dict(zip(DECODER_INPUTS, (scenes, features, np.ascontiguousarray(cosine, dtype=np.float32))))
        return self.decoder.run(None, feeds)[0]

    def probabilities(self, scenes: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
        """scenes (B, 3, H, W), prototypes (C, D) -> mask probabilities float32 (B, C, H, W)."""
        features = self.features(scenes)
        logits = self.logits(scenes, features, self.cosine(features, prototypes))
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def decode(self, scenes: np.ndarray, prototypes: np.ndarray,
               floor: float | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """scenes (1, 3, H, W), prototypes (C, D) -> (mask logits float32 (K, H, W), indices (K,) of the classes
        decoded): those whose peak cosine over the scene is at or over `floor` (None: all C, in order)."""
        features = self.features(scenes)
        cosine = self.cosine(features, prototypes)  # (1, C, h, w)
        keep = np.arange(len(prototypes))
        if floor is not None:
            keep = np.flatnonzero(cosine[0].reshape(len(prototypes), -1).max(axis=1) >= floor)
            if len(keep) == 0:
                return np.zeros((0, *scenes.shape[2:]), np.float32), keep
            if len(keep) < len(prototypes):
                cosine = cosine[:, keep]
        return self.logits(scenes, features, cosine)[0], keep

    def answer_logits(self, prepared: PreparedScene, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """mask logits (K, Hp, Wp) of a prepared scene -> (bool masks (K, H, W) in the scene's own pixels, scores
        (K,): each class's highest probability inside the scene); `answer` on logits, without a sigmoid per pixel."""
        rh, rw = prepared.resized
        logits = logits[:, :rh, :rw]
        scores = 1.0 / (1.0 + np.exp(-logits.reshape(len(logits), -1).max(axis=1, initial=-np.inf)))
        if (rh, rw) != prepared.size:  # resized down: bring the probabilities back, then threshold
            return self.answer(prepared, 1.0 / (1.0 + np.exp(-logits)))[0], scores
        return logits > self.mask_logit, scores

    def answer(self, prepared: PreparedScene, probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """probability (C, Hp, Wp) of a prepared scene -> (bool masks (C, H, W) in the scene's own pixels,
        scores (C,): each class's highest probability inside the scene, its padding left out)."""
        rh, rw = prepared.resized
        probability = probability[:, :rh, :rw]
        scores = probability.max(axis=(1, 2))
        h, w = prepared.size
        if (rh, rw) != (h, w):  # resized down: bring the probabilities back, then threshold
            probability = np.stack([np.asarray(Image.fromarray(p.astype(np.float32), "F").resize(
                (w, h), Image.Resampling.BILINEAR)) for p in probability])  # fmt: skip
        return probability > self.mask_threshold, scores


def locate(locator: Locator, scene: ImageInput, labels: list[str], prototypes: np.ndarray,
           threshold: float | None, index: int = 0, floor: float | None = None) -> list[Localization]:  # fmt: skip
    """One scene against `labels` (prototypes (C, D), row i for labels[i]) -> one Localization per label, best
    score first. threshold None: every class is present. floor: decode only the classes whose peak cosine
    reaches it (the bundle's `decode_floor`, with the bundle's threshold); the others are absent, score 0.0,
    empty mask."""
    prepared = prepare_scene(scene, locator.spec, locator.stride, index)
    logits, keep = locator.decode(prepared.pixels, prototypes, floor)
    h, w = prepared.size
    masks = np.zeros((len(labels), h, w), dtype=bool)
    scores = np.zeros(len(labels), dtype=np.float64)
    if len(keep):
        masks[keep], scores[keep] = locator.answer_logits(prepared, logits)
    present = np.ones(len(labels), bool) if threshold is None else scores >= threshold
    if floor is not None:
        present[np.setdiff1d(np.arange(len(labels)), keep)] = False
    order = np.argsort(-scores, kind="stable")
    out = Localization.from_masks([labels[c] for c in order], scores[order], present[order], masks[order])
    return out


_COLOURS = ((255, 64, 64), (64, 200, 255), (255, 210, 0), (120, 255, 120), (255, 100, 255), (255, 150, 50))


def render_overlay(scene: ImageInput, found: list[Localization], min_side: int = 384,
                   absent: bool = False) -> Image.Image:  # fmt: skip
    """The scene (upscaled, nearest, to at least `min_side` pixels a side so a person can see a 96x96 one) with
    each present class's mask tinted in its colour, its box drawn and labelled with its score -> RGB image.
    absent: draw the classes under the threshold too (their label then ends in "?")."""
    from PIL import ImageDraw

    img = ImageOps.exif_transpose(open_image(scene)).convert("RGB")
    base = np.asarray(img, dtype=np.float32)
    shown = [f for f in found if f.present or absent]
    for i, f in enumerate(shown):
        colour = np.asarray(_COLOURS[i % len(_COLOURS)], np.float32)
        base[f.mask] = 0.4 * base[f.mask] + 0.6 * colour
    k = max(1, -(-min_side // min(img.size)))
    out = Image.fromarray(base.astype(np.uint8)).resize((img.width * k, img.height * k), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(out)
    for i, f in enumerate(shown):
        if f.box is None:
            continue
        colour = _COLOURS[i % len(_COLOURS)]
        x0, y0, x1, y1 = f.box
        draw.rectangle((x0 * k, y0 * k, (x1 + 1) * k - 1, (y1 + 1) * k - 1), outline=colour, width=2)
        draw.text((x0 * k + 2, max(0, y0 * k - 12)), f"{f.label} {f.score:.2f}{'' if f.present else '?'}", fill=colour)
    return out
