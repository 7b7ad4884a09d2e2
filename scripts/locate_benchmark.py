"""Measure a localisation bundle through Runtime.locate, as a device runs it: IoU and localisation on fixed
seeded held-out scenes, a trivial baseline beside it, and the p50 latency of one scene against 20 classes.

    python scripts/locate_benchmark.py [--bundle metaedge/reference/locate_bundle] [--scenes 200] [--clutter 4,32]

Each scene's target is enrolled under its own label from the scene's reference (one shot), then
`rt.locate(scene, labels=[that label])` answers; the enrolled label set grows as scenes go, as a gallery does.
Baseline: every ink pixel of the scene as the mask (what a model that knows "ink" but not "which" gets).
"""

from __future__ import annotations

import argparse
import json
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
    args = ap.parse_args()
    with metaedge.Runtime(bundle=args.bundle or metaedge.reference.bundle_path("locate")) as rt:
        manifest = rt.bundle.manifest
        split = manifest["training"]["split"]
        glyphs = Glyphs.from_dataset(open_dataset(manifest["training"]["data"]["roots"]).subset(split["test"]))
        rows = []
        for clutter in parse_clutter(args.clutter):
            for one in (False, True):
                batch = scene_set(glyphs, clutter=clutter, count=args.scenes, seed=args.seed, one_colour=one)
                masks = np.zeros_like(batch.masks)
                for i in range(len(batch)):
                    label = f"c{clutter}-{int(one)}-{i}"
                    rt.enroll(label, [batch.references[i, 0].transpose(1, 2, 0)])
                    (found,) = rt.locate(batch.scenes[i].transpose(1, 2, 0), labels=[label])
                    masks[i] = found.mask
                iou, hit = score_masks(masks.astype(np.float32), batch.masks, threshold=0.5)
                base_iou, base_hit = score_masks((batch.scenes.max(axis=1) > 0).astype(np.float32), batch.masks, 0.5)
                (m, ci), (h, hci) = mean_ci95(iou), mean_ci95(hit)
                rows.append({"clutter": clutter, "one_colour": one, "scenes": len(batch), "iou": m, "iou_ci95": ci,
                             "localisation": h, "localisation_ci95": hci,
                             "baseline_all_ink_iou": float(base_iou.mean()),
                             "baseline_all_ink_localisation": float(base_hit.mean())})  # fmt: skip
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
        times = []
        for _ in range(args.latency_runs):
            t = time.perf_counter()
            found = rt.locate(png)
            times.append(1e3 * (time.perf_counter() - t))
        assert len(found) == 20
        print(json.dumps({"latency_ms_96x96_20_classes": {"p50": float(np.percentile(times, 50)),
                                                         "p90": float(np.percentile(times, 90))},
                          "runs": args.latency_runs, "model_id": rt.bundle.model_id}))  # fmt: skip


if __name__ == "__main__":
    main()
