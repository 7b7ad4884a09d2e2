"""Evaluation of one-shot segmentation: mean IoU and localisation accuracy on fixed seeded cluttered scenes.

The measures are Michaelis et al.'s (2018): a pixel is predicted foreground where the mask's probability is
above 0.3, IoU is computed per scene and averaged; localisation is a hit when the predicted mask's centre of
mass lies within 5 pixels of the true mask's. Both come with normal-approximation 95% confidence intervals.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from metaedge import checkpoint as ckpt
from metaedge.data import PreprocessSpec, open_dataset
from metaedge.data.clutter import REFERENCE_SIZE, SCENE_SIZE, Glyphs, SceneBatch, scene_set
from metaedge.errors import DataError
from metaedge.evaluate import mean_ci95
from metaedge.methods.segment import ProtoSeg

THRESHOLD = 0.3  # foreground probability, as the paper
HIT_RADIUS = 5.0  # pixels between the centres of mass of predicted and true masks
# Pixels scaled to [0, 1], no inversion: the scenes are ink on black already, so padding sees background.
SCENE_SPEC = PreprocessSpec(channels=3, size=SCENE_SIZE, invert=False, mean=(0.0,) * 3, std=(1.0,) * 3)
REFERENCE_SPEC = PreprocessSpec(channels=3, size=REFERENCE_SIZE, invert=False, mean=(0.0,) * 3, std=(1.0,) * 3)


@dataclass
class SegmentResult:
    """Scores over `scenes` seeded scenes of one clutter level; iou and localisation are fractions in [0, 1]."""

    iou: float
    iou_ci95: float
    localisation: float
    localisation_ci95: float
    clutter: int
    one_colour: bool
    scenes: int
    shot: int
    seed: int
    decoder: bool
    groups: list[str]

    @property
    def accuracy(self) -> float:
        """The score training selects checkpoints on (the trainer's progress bar and log call it accuracy)."""
        return self.iou

    @property
    def ci95(self) -> float:
        return self.iou_ci95

    def to_dict(self) -> dict:
        return asdict(self)


def scenes_to_tensors(batch: SceneBatch, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 scenes and references -> normalised float32 (B, 3, 96, 96) and (B, K, 3, 32, 32) on `device`."""
    scenes = torch.from_numpy(SCENE_SPEC.normalize(batch.scenes)).to(device)
    references = torch.from_numpy(REFERENCE_SPEC.normalize(batch.references)).to(device)
    return scenes, references


@torch.no_grad()
def predict_masks(
    method: ProtoSeg, batch: SceneBatch, *, device: str = "cpu", use_decoder: bool | None = None, chunk: int = 64
) -> np.ndarray:
    """Each scene against its own references -> foreground probability float32 (B, 96, 96), eval mode."""
    method.eval()  # batch norm uses running statistics: every scene is answered on its own
    out = []
    for start in range(0, len(batch), chunk):
        part = SceneBatch(*(getattr(batch, f)[start : start + chunk] for f in batch.__dataclass_fields__))
        scenes, references = scenes_to_tensors(part, device)
        logits = method.mask_logits(scenes, method.prototypes(references), use_decoder=use_decoder)
        out.append(torch.sigmoid(logits[:, 0]).float().cpu().numpy())
    return np.concatenate(out)


def score_masks(
    probability: np.ndarray, truth: np.ndarray, threshold: float = THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """probability float (B, H, W), truth bool (B, H, W) -> (IoU (B,), localisation hit (B,) as 0/1 floats).

    A scene whose truth and prediction are both empty scores IoU 1; an empty prediction never localises.
    """
    pred = probability > threshold
    inter = (pred & truth).sum(axis=(1, 2))
    union = (pred | truth).sum(axis=(1, 2))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    hits = np.zeros(len(pred))
    for i in range(len(pred)):
        if pred[i].any() and truth[i].any():
            hits[i] = float(np.linalg.norm(_centre(pred[i]) - _centre(truth[i])) <= HIT_RADIUS)
    return iou.astype(np.float64), hits


def _centre(mask: np.ndarray) -> np.ndarray:
    """Centre of mass (x, y) of a boolean mask (H, W)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def evaluate_segment(
    method: ProtoSeg, glyphs: Glyphs, *, clutter: int, scenes: int, seed: int = 0, shot: int = 1,
    one_colour: bool = False, use_decoder: bool | None = None, device: str = "cpu", chunk: int = 100,
    on_chunk: Callable[[int], None] | None = None,
) -> SegmentResult:  # fmt: skip
    """Mean IoU and localisation over the fixed seeded scene set (data/clutter.py `scene_set`) of one clutter level.

    The set is generated `chunk` scenes at a time, so memory stays small at any number of scenes.
    """
    if scenes < 1:
        raise DataError(f"need at least one evaluation scene, not {scenes}")
    ious, hits = [], []
    for start in range(0, scenes, chunk):
        batch = scene_set(glyphs, clutter=clutter, count=min(chunk, scenes - start), seed=seed, shot=shot,
                          one_colour=one_colour, start=start)  # fmt: skip
        iou, hit = score_masks(predict_masks(method, batch, device=device, use_decoder=use_decoder), batch.masks)
        ious.append(iou)
        hits.append(hit)
        if on_chunk is not None:
            on_chunk(len(batch))
    iou_mean, iou_ci = mean_ci95(np.concatenate(ious))
    hit_mean, hit_ci = mean_ci95(np.concatenate(hits))
    decoder = method.decoder is not None if use_decoder is None else use_decoder
    return SegmentResult(
        iou=iou_mean, iou_ci95=iou_ci, localisation=hit_mean, localisation_ci95=hit_ci, clutter=clutter,
        one_colour=one_colour, scenes=scenes, shot=shot, seed=seed, decoder=decoder,
        groups=sorted(set(glyphs.class_groups)),
    )  # fmt: skip


def held_out_glyphs(meta: dict, where: str, data: Sequence[str | os.PathLike] | None, groups: Sequence[str] | None,
                    key: str = "test") -> Glyphs:  # fmt: skip
    """The drawings of a model's held-out (`key`: "test" or "val") groups of the data it trained from, or of
    the named `groups` of `data`."""
    data = list(data) if data else meta["data"]["roots"]
    if groups is None:
        groups = (meta.get("split") or {}).get(key) or []
        if not groups:
            raise DataError(f"{where}: the model holds out no {key} groups; name the groups to evaluate on")
    return Glyphs.from_dataset(open_dataset(data).subset(groups))


def evaluate_segment_checkpoint(
    checkpoint: str | os.PathLike, data: Sequence[str | os.PathLike] | None = None, *,
    groups: Sequence[str] | None = None, clutter: Sequence[int] = (4, 32), scenes: int = 1000, seed: int = 0,
    shot: int = 1, colours: Sequence[bool] = (False, True), use_decoder: bool | None = None, device: str = "cpu",
    on_chunk: Callable[[int], None] | None = None,
) -> list[SegmentResult]:  # fmt: skip
    """A segmentation run (its best checkpoint) or checkpoint file on its held-out groups: one result per
    clutter level and colouring (`colours`: False coloured, True one-colour), in that order."""
    loaded = ckpt.load(checkpoint, map_location=device)
    if loaded.meta.get("task") != "segment" or not isinstance(loaded.method, ProtoSeg):
        raise DataError(f"{loaded.path}: a {loaded.meta.get('task', 'classify')} model, not a segmentation one "
                        "(train it with --task segment)")  # fmt: skip
    bad = [c for c in clutter if int(c) < 1]
    if bad or not clutter:
        raise DataError(f"clutter levels are positive numbers of characters, not {list(clutter)}")
    glyphs = held_out_glyphs(loaded.meta, str(loaded.path), data, groups)
    return [
        evaluate_segment(loaded.method, glyphs, clutter=int(c), scenes=scenes, seed=seed, shot=shot,
                         one_colour=one, use_decoder=use_decoder, device=device, on_chunk=on_chunk)
        for c in clutter for one in colours
    ]  # fmt: skip
