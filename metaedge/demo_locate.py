"""`metaedge demo --task locate`: enroll characters of an alphabet the shipped localisation model never saw,
find them in cluttered scenes, report IoU, localisation and latency, and draw the overlays."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from metaedge.data import open_dataset
from metaedge.data.clutter import Glyphs, make_scene
from metaedge.demo import SAMPLES, _percentiles
from metaedge.errors import DataError
from metaedge.evaluate_segment import score_masks
from metaedge.locate import render_overlay
from metaedge.reference import bundle_path
from metaedge.runtime import Runtime


@dataclass
class LocateDemoResult:
    alphabet: str
    way: int
    scenes: int
    clutter: int
    iou: float
    localisation: float
    top1: float  # scenes where the target's class scored best of all enrolled
    locate_ms_per_scene: dict
    overlays: list[str]
    model_id: str

    def to_dict(self) -> dict:
        return asdict(self)


def run_locate_demo(bundle: str | Path | None = None, *, way: int = 5, clutter: int = 4, seed: int = 0,
                    overlay: Path | None = None, samples: Path = SAMPLES) -> LocateDemoResult:  # fmt: skip
    """`way` seeded scenes of the shipped samples' alphabet (held out from the shipped model's training), each
    with a different target class: every target is enrolled from its scene's reference (one drawing by another
    drawer), then every scene is searched for all of them at once. Overlays go to `overlay` (PNG per scene)."""
    dataset = open_dataset(samples)
    glyphs = Glyphs.from_dataset(dataset)
    if not 1 <= way <= min(20, glyphs.num_classes):
        raise DataError(f"--way must be between 1 and {min(20, glyphs.num_classes)} for the locate demo, not {way}")
    scenes, seen = [], set()
    for i in range(1000 * way):  # one seeded scene per target class, the first `way` distinct ones
        scene = make_scene(glyphs, np.random.default_rng([seed, clutter, i]), clutter=clutter)
        if scene.target_class not in seen:
            seen.add(scene.target_class)
            scenes.append(scene)
        if len(scenes) == way:
            break
    labels = [glyphs.class_keys[s.target_class].split("/")[-1] for s in scenes]
    written, times, top1, masks = [], [], 0, []
    with Runtime(bundle or bundle_path("locate")) as rt:
        for s, label in zip(scenes, labels):
            rt.enroll(label, [s.references[0].transpose(1, 2, 0)])
        if overlay is not None:
            overlay.mkdir(parents=True, exist_ok=True)
        for s, label in zip(scenes, labels):
            scene = s.scene.transpose(1, 2, 0)
            t = time.perf_counter()
            found = rt.locate(scene)
            times.append(1e3 * (time.perf_counter() - t))
            top1 += found[0].label == label
            masks.append(next(f.mask for f in found if f.label == label))
            if overlay is not None:
                written.append(str(overlay / f"scene{len(written):02d}-{label}.png"))
                render_overlay(scene, [f for f in found if f.label == label], absent=True).save(written[-1])
        model_id = rt.bundle.model_id
    truth = np.stack([s.mask for s in scenes])
    iou, hit = score_masks(np.stack(masks).astype(np.float32), truth, threshold=0.5)
    return LocateDemoResult(
        alphabet=dataset.groups()[0], way=len(scenes), scenes=len(scenes), clutter=clutter, iou=float(iou.mean()),
        localisation=float(hit.mean()), top1=top1 / len(scenes), locate_ms_per_scene=_percentiles(times),
        overlays=written, model_id=model_id,
    )  # fmt: skip

