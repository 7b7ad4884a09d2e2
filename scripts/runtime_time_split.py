#!/usr/bin/env python
"""Where a classify and an enroll call spend their time, per bundle: the part every model pays the same
(decode + preprocess, the gallery) against the network's own.

    python scripts/runtime_time_split.py BUNDLE [BUNDLE...] [--classes 40] [--queries 300] [--rounds 3]

Classify, per query image (medians over the queries, one line per round): decode + preprocess alone in a tight
loop; then the same two steps alternated with the network as Runtime.classify runs them (decode + preprocess,
then ONNX Runtime on that image); then ONNX Runtime alone in a tight loop on one image. The gap between
"alternated" and "tight" is what each step loses to the other (caches, ONNX Runtime's threads going to
sleep). Enroll, per class of 5 images, on an on-disk gallery: Runtime.enroll's own timings_ms.
Why it exists (issue 17): a single network about 5x faster than the ensemble classified only about 2.6x faster
end to end; this says which part of the call is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np

from metaedge.demo import SAMPLES
from metaedge.images import preprocess
from metaedge.runtime import Runtime


def median_ms(seconds: list[float]) -> float:
    return 1e3 * float(np.median(seconds))


def classify_split(rt: Runtime, queries: list[Path]) -> dict:
    name = rt.session.get_inputs()[0].name
    alone, pre, net, tight = [], [], [], []
    for q in queries:
        t = time.perf_counter()
        preprocess([q], rt.spec)
        alone.append(time.perf_counter() - t)
    for q in queries:
        t0 = time.perf_counter()
        x = preprocess([q], rt.spec)
        t1 = time.perf_counter()
        rt.session.run(None, {name: x})
        t2 = time.perf_counter()
        pre.append(t1 - t0)
        net.append(t2 - t1)
    x = preprocess([queries[0]], rt.spec)
    for _ in queries:
        t = time.perf_counter()
        rt.session.run(None, {name: x})
        tight.append(time.perf_counter() - t)
    return {"preprocess_alone": median_ms(alone), "preprocess_alternated": median_ms(pre),
            "network_alternated": median_ms(net), "network_tight": median_ms(tight)}  # fmt: skip


def enroll_split(rt: Runtime, chars: list[Path]) -> dict:
    timings: dict[str, list[float]] = {}
    for c in chars:
        result = rt.enroll(c.name, sorted(c.glob("*.png"))[:5], replace=True)
        for key, ms in result.timings_ms.items():
            timings.setdefault(key, []).append(ms)
    return {key: float(np.median(ms)) for key, ms in timings.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--classes", type=int, default=40)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    chars = sorted(p for p in (SAMPLES / "Korean").iterdir() if p.is_dir())[: args.classes]
    queries = [p for c in chars for p in sorted(c.glob("*.png"))[5:]][: args.queries]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        runtimes = [stack.enter_context(Runtime(b, Path(tmp) / f"gallery{i}.db")) for i, b in enumerate(args.bundles)]
        for rt in runtimes:
            rt.embed([queries[0]])  # first-inference cost is not steady state
        for r in range(args.rounds):  # bundles in turn, round after round: the VM's drift hits each alike
            for rt in runtimes:
                c, e = classify_split(rt, queries), enroll_split(rt, chars)
                print(f"round {r + 1} {rt.bundle.model_id}\n  classify ms: "
                      + "  ".join(f"{k} {v:.3f}" for k, v in c.items())
                      + "\n  enroll ms:   " + "  ".join(f"{k} {v:.2f}" for k, v in e.items()), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
