#!/usr/bin/env python
"""Every meta-learning algorithm on the same data, budget and episodes (the table in BENCHMARKS.md, issue 6).

For each of protonet, maml, fomaml, anil, metasgd: meta-train a Conv4 from scratch on the two small Omniglot
background sets (split seed 0: Greek and Korean held out), same episodes and episode shape, in its own process
(so its peak memory is its own, measured by /usr/bin/time), validating once at the end (so every
algorithm is evaluated at the same budget, with no checkpoint selection); then evaluate on the held-out alphabets:
5-way 1-shot, 5-way 5-shot, and within-alphabet disjoint-drawer 20-way 1-shot, `--eval-episodes` seeded
episodes each; and time the device's head adaptation (`kernels.adapt_head` with the algorithm's exported
inner loop, 5-way 5-shot, D=64).

    python scripts/benchmark_algorithms.py [--episodes 1000] [--eval-episodes 600] [--out runs/algorithms]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from metaedge import checkpoint as ckpt
from metaedge import kernels
from metaedge.evaluate import evaluate_checkpoint
from metaedge.exporter import inner_loop

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
ALGORITHMS = ("protonet", "maml", "fomaml", "anil", "metasgd")
PROTOCOLS = {
    "5-way 1-shot": dict(way=5, shot=1, query=15),
    "5-way 5-shot": dict(way=5, shot=5, query=15),
    "20-way 1-shot within alphabet": dict(way=20, shot=1, query=1, within_group=True, disjoint_drawers=True),
}


def train(algorithm: str, out: Path, episodes: int) -> dict:
    zips = [DATA / "images_background_small1.zip", DATA / "images_background_small2.zip"]
    command = ["/usr/bin/time", "-f", "%M %e", sys.executable, "-m", "metaedge.train",
               *[a for z in zips for a in ("--data", str(z))], "--out", str(out), "--algorithm", algorithm,
               "--way", "20", "--shot", "1", "--query", "5", "--episodes", str(episodes), "--meta-batch", "1",
               "--val-every", str(episodes), "--seed", "0", "--device", "cpu", "--overwrite",
               "--json"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    max_kib, wall = done.stderr.strip().splitlines()[-1].split()
    return {"train_minutes": float(wall) / 60, "peak_rss_mib": int(max_kib) / 1024}


def adaptation_ms(run: Path, repeats: int = 200) -> float | None:
    """Median time of the device's head adaptation for this algorithm's inner loop, 5-way 5-shot, D=64."""
    method = ckpt.load(run).method
    loop = inner_loop(method, None)
    if loop["steps"] == 0:
        return None
    rng = np.random.default_rng(0)
    z = rng.standard_normal((25, 64)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    y = np.repeat(np.arange(5), 5)
    lr_w, lr_b = method.step_sizes(5) if hasattr(method, "step_sizes") else (None, None)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        kernels.adapt_head(z, y, 5, steps=loop["steps"], lr=loop["lr"], weight_decay=loop["weight_decay"],
                           init=loop["head_init"], lr_weight=lr_w, lr_bias=lr_b)  # fmt: skip
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--eval-episodes", type=int, default=600)
    ap.add_argument("--out", default="runs/algorithms")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    args = ap.parse_args()
    rows = []
    for algorithm in args.algorithms.split(","):
        run = Path(args.out) / algorithm
        row = {"algorithm": algorithm, "episodes": args.episodes, **train(algorithm, run, args.episodes)}
        for name, protocol in PROTOCOLS.items():
            t = time.perf_counter()
            r = evaluate_checkpoint(run, episodes=args.eval_episodes, seed=0, **protocol)
            row[name] = {"accuracy": r.accuracy, "ci95": r.ci95, "eval_seconds": time.perf_counter() - t}
        row["adaptation_ms"] = adaptation_ms(run)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"| algorithm | {' | '.join(PROTOCOLS)} | train min | peak RSS MiB | device adaptation ms |")
    print("|" + " --- |" * (len(PROTOCOLS) + 4))
    for r in rows:
        accs = " | ".join(f"{100 * r[p]['accuracy']:.2f} ± {100 * r[p]['ci95']:.2f}" for p in PROTOCOLS)
        adapt = "-" if r["adaptation_ms"] is None else f"{r['adaptation_ms']:.3f}"
        print(f"| {r['algorithm']} | {accs} | {r['train_minutes']:.1f} | {r['peak_rss_mib']:.0f} | {adapt} |")
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
