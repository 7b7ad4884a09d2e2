"""`metaedge demo`: enroll characters the shipped model never saw, from 1 or 5 images each, and classify the rest."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from metaedge.data import open_dataset
from metaedge.errors import DataError
from metaedge.runtime import REFERENCE_BUNDLE, Runtime

SAMPLES = Path(__file__).resolve().parent / "reference" / "samples"


@dataclass
class DemoResult:
    alphabet: str
    way: int
    shots: int
    queries: int
    correct: int
    accuracy: float
    ci95: float
    unknown: int
    enroll_ms_per_class: dict
    classify_ms_per_image: dict
    model_id: str

    def to_dict(self) -> dict:
        return asdict(self)


def _percentiles(values_ms: list[float]) -> dict:
    v = np.asarray(values_ms)
    return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)), "max": float(v.max()),
            "mean": float(v.mean())}  # fmt: skip


def run_demo(bundle: str | Path | None = None, *, shots: int = 5, way: int = 20, seed: int = 0,
             samples: Path = SAMPLES) -> DemoResult:  # fmt: skip
    """Within one held-out alphabet: enroll `way` characters from `shots` drawers each (the same drawers for
    every character, as in Lake et al.), then classify every drawing by the other drawers, one image at a time.
    Accuracy is closed-set, as in the benchmark (the best class counts even where it was rejected); `unknown`
    counts the drawings that classify answered "unknown" with the bundle's threshold for `shots` shots.
    """
    dataset = open_dataset(samples)
    groups = dataset.groups()
    if len(groups) != 1:
        raise DataError(f"{samples}: expected the samples of one alphabet, found {groups}")
    if not 1 <= way <= len(dataset.classes):
        raise DataError(f"--way must be between 1 and {len(dataset.classes)} for {groups[0]}")
    rng = np.random.default_rng(seed)
    classes = [dataset.classes[i] for i in sorted(rng.choice(len(dataset.classes), way, replace=False))]
    drawers = sorted({ref.drawer for ref in classes[0].images})
    if not 1 <= shots < len(drawers):
        raise DataError(f"--shots must be between 1 and {len(drawers) - 1}")
    support_drawers = set(rng.choice(drawers, shots, replace=False).tolist())
    root = samples / groups[0]
    enroll_ms, classify_ms, correct, unknown, total = [], [], 0, 0, 0
    with Runtime(bundle) as rt:
        for cls in classes:
            paths = [root / cls.name / Path(r.member).name for r in cls.images if r.drawer in support_drawers]
            t = time.perf_counter()
            rt.enroll(cls.name, paths)
            enroll_ms.append(1e3 * (time.perf_counter() - t))
        for cls in classes:
            for ref in cls.images:
                if ref.drawer in support_drawers:
                    continue
                t = time.perf_counter()
                # The bundle's own open-set thresholds, as a user's classify runs; accuracy stays closed-set.
                (pred,) = rt.classify([root / cls.name / Path(ref.member).name])
                classify_ms.append(1e3 * (time.perf_counter() - t))
                correct += pred.top_k[0][0] == cls.name
                unknown += pred.unknown
                total += 1
        model_id = rt.bundle.model_id
    acc = correct / total
    return DemoResult(
        alphabet=groups[0], way=way, shots=shots, queries=total, correct=correct, accuracy=acc,
        ci95=1.96 * float(np.sqrt(acc * (1 - acc) / total)), unknown=unknown,
        enroll_ms_per_class=_percentiles(enroll_ms), classify_ms_per_image=_percentiles(classify_ms),
        model_id=model_id,
    )  # fmt: skip


__all__ = ["REFERENCE_BUNDLE", "SAMPLES", "DemoResult", "run_demo"]
