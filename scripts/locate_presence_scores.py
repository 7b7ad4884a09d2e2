"""Which per-class score of a localisation bundle tells scenes holding the target from scenes without it, and
which ranks the target first among enrolled classes: the shipped score (the mask's highest foreground
probability) against statistics of the cosine map before the decoder.

    python scripts/locate_presence_scores.py [--bundle B] [--part val|test] [--clutter 4,8] [--scenes 1000]

Presence: per clutter level, `--scenes` seeded scenes with the target and as many without (scripts/
locate_benchmark.py's sets), the target's references enrolled; AUROC of each score (the chance that a scene
with the target outscores one without). Ranking: scene i against the targets of scenes i..i+19 enrolled (20
classes), the share of scenes whose own target scores highest (chance 0.05). --part val chooses, test reports.
"""

from __future__ import annotations

import argparse

import numpy as np

import metaedge
from metaedge.data import open_dataset
from metaedge.data.clutter import Glyphs, parse_clutter, scene_set
from metaedge.locate import prepare_scene

RANKED = 20


def scores(locator, scene: np.ndarray, prototypes: np.ndarray) -> dict[str, np.ndarray]:
    """One scene uint8 (3, H, W) against prototypes (C, D) -> {score name: (C,)}."""
    prepared = prepare_scene(scene.transpose(1, 2, 0), locator.spec, locator.stride)
    features = locator.features(prepared.pixels)
    cosine = locator.cosine(features, prototypes)  # (1, C, h, w)
    logits = locator.logits(prepared.pixels, features, cosine)[0]
    top = -np.sort(-cosine[0].reshape(len(prototypes), -1), axis=1)  # each class's cells, best first
    out = {"max probability (shipped)": 1.0 / (1.0 + np.exp(-logits.reshape(len(prototypes), -1).max(axis=1)))}
    for k in (1, 2, 4, 8, 16):
        out[f"mean of top {k} cosine"] = top[:, :k].mean(axis=1)
    return out


def auroc(present: np.ndarray, absent: np.ndarray) -> float:
    """The chance a scene with the target outscores one without (ties count half)."""
    return float((present[:, None] > absent[None]).mean() + 0.5 * (present[:, None] == absent[None]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=None, help="default: the shipped localisation bundle")
    ap.add_argument("--part", default="test", choices=["val", "test"])
    ap.add_argument("--clutter", default="4,8")
    ap.add_argument("--scenes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with metaedge.Runtime(bundle=args.bundle or metaedge.reference.bundle_path("locate")) as rt:
        rt.use_target({**(rt.bundle.manifest.get("target") or {}), "threads": 1})
        split = rt.bundle.manifest["training"]["split"]
        glyphs = Glyphs.from_dataset(open_dataset(rt.bundle.manifest["training"]["data"]["roots"]).subset(
            split[args.part]))  # fmt: skip
        for clutter in parse_clutter(args.clutter):
            sets = {has: scene_set(glyphs, clutter=clutter, count=args.scenes + RANKED, seed=args.seed, present=has)
                    for has in (True, False)}  # fmt: skip
            prototypes = {}
            for has, batch in sets.items():
                for i, refs in enumerate(batch.references):
                    rt.enroll(f"{int(has)}-{i}", [r.transpose(1, 2, 0) for r in refs])
            names, protos = rt.gallery.prototypes()
            for has in (True, False):
                prototypes[has] = np.stack([protos[names.index(f"{int(has)}-{i}")] for i in range(len(sets[has]))])
            own = {has: [] for has in (True, False)}
            first = []
            for i in range(args.scenes):
                for has in (True, False):
                    ranked = RANKED if has else 1
                    s = scores(rt.locator, sets[has].scenes[i], prototypes[has][i : i + ranked])
                    own[has].append({k: v[0] for k, v in s.items()})
                    if has:
                        first.append({k: float(v.argmax() == 0) for k, v in s.items()})
            print(f"clutter {clutter}, {args.part}, {args.scenes} scenes with and without the target:")
            for name in own[True][0]:
                a = auroc(np.array([r[name] for r in own[True]]), np.array([r[name] for r in own[False]]))
                print(f"  {name:>26}: presence AUROC {a:.3f}, target first of {RANKED} "
                      f"{np.mean([r[name] for r in first]):.3f}")  # fmt: skip
            for label in rt.labels():
                rt.remove(label)


if __name__ == "__main__":
    main()
