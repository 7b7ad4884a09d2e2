#!/usr/bin/env python
"""End-to-end latency of the device runtime on this machine: enroll a class from 5 images (decode to commit)
and classify one image (decode to answer), with the reference bundle and an on-disk gallery.

    python scripts/bench_runtime.py [--bundle DIR] [--classes 40] [--queries 300] [--json PATH]

Targets (issue 4): enroll p50 < 20 ms, classify p50 < 1 ms. Prints measured percentiles and the ratio to target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from metaedge.demo import SAMPLES
from metaedge.runtime import Runtime


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {k: float(np.percentile(a, q)) for k, q in (("p50", 50), ("p90", 90), ("p99", 99))} | {"n": len(a)}


def versus(measured: float, target: float) -> str:
    if measured <= target:
        return f"p50 is {target / measured:.1f}x under"
    return f"p50 is {measured / target:.1f}x OVER"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--classes", type=int, default=40)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    chars = sorted(p for p in (SAMPLES / "Korean").iterdir() if p.is_dir())[: args.classes]
    images = {c.name: sorted(c.glob("*.png")) for c in chars}
    enroll_ms, classify_ms = [], []
    with tempfile.TemporaryDirectory() as tmp:
        with Runtime(args.bundle, Path(tmp) / "gallery.db") as rt:
            rt.embed([images[chars[0].name][0]])  # session warm-up: first-inference cost is not steady state
            for c in chars:
                t = time.perf_counter()
                rt.enroll(c.name, images[c.name][:5])
                enroll_ms.append(1e3 * (time.perf_counter() - t))
            queries = [p for c in chars for p in images[c.name][5:]][: args.queries]
            rt.classify([queries[0]], threshold=None)
            for q in queries:
                t = time.perf_counter()
                rt.classify([q])
                classify_ms.append(1e3 * (time.perf_counter() - t))
            model = rt.bundle.model_id
    result = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },  # fmt: skip
        "model_id": model,
        "enroll_5_images_ms": percentiles(enroll_ms),
        "classify_1_image_ms": percentiles(classify_ms),
        "gallery_classes": len(chars),
    }
    e, c = result["enroll_5_images_ms"], result["classify_1_image_ms"]
    print(f"model {model}, gallery of {len(chars)} classes on disk (SQLite WAL, synchronous=FULL)")
    print(f"enroll one class from 5 images, decode to commit: p50 {e['p50']:.2f} ms  p90 {e['p90']:.2f} ms  "
          f"p99 {e['p99']:.2f} ms   target 20 ms: {versus(e['p50'], 20)}")  # fmt: skip
    print(f"classify one image, decode to answer:            p50 {c['p50']:.3f} ms  p90 {c['p90']:.3f} ms  "
          f"p99 {c['p99']:.3f} ms   target 1 ms: {versus(c['p50'], 1)}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
