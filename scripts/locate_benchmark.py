"""Measure a localisation bundle through Runtime.locate, as a device runs it: IoU and localisation on fixed
seeded held-out scenes, a trivial baseline beside it, the detection view, and the p50 latency of one scene
against 20 classes.

    python scripts/locate_benchmark.py [--bundle metaedge/reference/locate_bundle] [--scenes 200] [--clutter 4,32]
        [--shot 1] [--detection] [--latency-runs 100]

Each scene's target is enrolled under its own label from the scene's references (`--shot` drawings of the
class, each by another drawer, none of them the scene's; the gallery's prototype is their mean), then
`rt.locate(scene, labels=[that label])` answers; the enrolled label set grows as scenes go, as a gallery does.
Baseline: every ink pixel of the scene as the mask (what a model that knows "ink" but not "which" gets).

--detection adds as many scenes WITHOUT the target (seeded sets of their own: a character of another class
where the target would be) and reports the detection view: AP50 over all scenes ranked by score (a hit is a
scene holding the target whose box, from the mask, overlaps the true box by IoU >= 0.5; recall over the
scenes holding it), and the false-positive rate: the share of target-absent scenes answered `present` at
the bundle's threshold (beside the true-positive rate on the scenes holding it).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import metaedge
from metaedge.data import open_dataset
from metaedge.data.clutter import Glyphs, parse_clutter, scene_set
from metaedge.evaluate import mean_ci95
from metaedge.evaluate_segment import score_masks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default=None, help="default: the shipped localisation bundle")
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--clutter", default="4,32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-runs", type=int, default=100)
    ap.add_argument("--shot", type=int, default=1, help="references enrolled per target (different drawers)")
    ap.add_argument("--detection", action="store_true", help="also target-absent scenes: AP50, false positives")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: the bundle's target)")
    args = ap.parse_args()
    with metaedge.Runtime(bundle=args.bundle or metaedge.reference.bundle_path("locate")) as rt:
        if args.threads is not None:
            rt.use_target({**(rt.bundle.manifest.get("target") or {}), "threads": args.threads})
        manifest = rt.bundle.manifest
        split = manifest["training"]["split"]
        glyphs = Glyphs.from_dataset(open_dataset(manifest["training"]["data"]["roots"]).subset(split["test"]))
        rows = []
        for clutter in parse_clutter(args.clutter):
            for one in (False, True):
                batch = scene_set(glyphs, clutter=clutter, count=args.scenes, seed=args.seed, one_colour=one,
                                  shot=args.shot)  # fmt: skip
                masks, scores, boxes, present = _locate_set(rt, batch, f"c{clutter}-{int(one)}")
                iou, hit = score_masks(masks.astype(np.float32), batch.masks, threshold=0.5)
                base_iou, base_hit = score_masks((batch.scenes.max(axis=1) > 0).astype(np.float32), batch.masks, 0.5)
                (m, ci), (h, hci) = mean_ci95(iou), mean_ci95(hit)
                rows.append({"clutter": clutter, "one_colour": one, "shot": args.shot, "scenes": len(batch),
                             "iou": m, "iou_ci95": ci, "localisation": h, "localisation_ci95": hci,
                             "baseline_all_ink_iou": float(base_iou.mean()),
                             "baseline_all_ink_localisation": float(base_hit.mean())})  # fmt: skip
                if args.detection:
                    empty = scene_set(glyphs, clutter=clutter, count=args.scenes, seed=args.seed, one_colour=one,
                                      shot=args.shot, present=False)  # fmt: skip
                    _, absent_scores, _, absent_present = _locate_set(rt, empty, f"a{clutter}-{int(one)}")
                    truth = [_box(mask) for mask in batch.masks]
                    hits = np.array([b is not None and _box_iou(b, t) >= 0.5 for b, t in zip(boxes, truth)])
                    rows[-1].update({"ap50": average_precision(np.concatenate([scores, absent_scores]),
                                                               np.concatenate([hits, np.zeros(len(empty), bool)]),
                                                               len(batch)),
                                     "true_positive_rate": float(present.mean()),
                                     "false_positive_rate": float(absent_present.mean()),
                                     "scenes_absent": len(empty)})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
        # Latency: one 96x96 scene against 20 enrolled classes, decode (a PNG's bytes) to answer.
        import io

        from PIL import Image

        for label in rt.labels():
            rt.remove(label)
        batch = scene_set(glyphs, clutter=4, count=20, seed=args.seed + 7)
        for i in range(20):
            rt.enroll(f"class{i}", [batch.references[i, 0].transpose(1, 2, 0)])
        buf = io.BytesIO()
        Image.fromarray(batch.scenes[0].transpose(1, 2, 0)).save(buf, format="PNG")
        png = buf.getvalue()
        for _ in range(5):
            rt.locate(png)
        times, cpu = [], []  # wall clock, and this process's CPU time (what a shared machine's load leaves out)
        for _ in range(args.latency_runs):
            t, c = time.perf_counter(), time.process_time()
            found = rt.locate(png)
            times.append(1e3 * (time.perf_counter() - t))
            cpu.append(1e3 * (time.process_time() - c))
        assert len(found) == 20
        print(json.dumps({"latency_ms_96x96_20_classes": {"p50": float(np.percentile(times, 50)),
                                                         "p90": float(np.percentile(times, 90))},
                          "cpu_ms_96x96_20_classes": {"p50": float(np.percentile(cpu, 50)),
                                                     "mean": float(np.mean(cpu))},
                          "decoded_classes": sum(f.score > 0 for f in found),
                          "runs": args.latency_runs, "threads": rt.locator.threads, "load_average": os.getloadavg(),
                          "model_id": rt.bundle.model_id}))  # fmt: skip


def _locate_set(rt, batch, prefix: str):
    """Enroll each scene's references under its own label, locate it in its scene -> (masks bool (B, H, W),
    scores (B,), boxes (B: tuple or None), present bool (B,))."""
    masks = np.zeros((len(batch), *batch.scenes.shape[2:]), dtype=bool)
    scores, boxes, present = np.zeros(len(batch)), [], np.zeros(len(batch), bool)
    for i in range(len(batch)):
        label = f"{prefix}-{i}"
        rt.enroll(label, [ref.transpose(1, 2, 0) for ref in batch.references[i]])
        (found,) = rt.locate(batch.scenes[i].transpose(1, 2, 0), labels=[label])
        masks[i], scores[i], present[i] = found.mask, found.score, found.present
        boxes.append(found.box)
    return masks, scores, boxes, present


def _box(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())) if len(xs) else None


def _box_iou(a, b) -> float:
    """Inclusive pixel boxes (x0, y0, x1, y1) -> IoU of their areas."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(iw, 0) * max(ih, 0)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def average_precision(scores: np.ndarray, hits: np.ndarray, positives: int) -> float:
    """Detections ranked by score (one per scene), hits bool: a correct box -> the area under the precision-recall
    curve, precision made monotone (VOC's all-point interpolation); recall is over `positives` scenes."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / max(positives, 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float((steps * precision).sum())


if __name__ == "__main__":
    main()
