#!/usr/bin/env python
"""Accuracy against edge latency for candidate models: each exported as the device runs it, then measured.

    python scripts/accuracy_pareto.py --candidate NAME=RUN_DIR[@EXPORT] --candidate NAME=BUNDLE_DIR [...]
        [--episodes 1000] [--seed 0] [--rounds 3] [--json PATH] [--markdown PATH]

EXPORT: comma-separated `metaedge export` settings: a number N for `--views N`, eN for `--enroll-views N`,
int8 for `--int8` (e.g. `runs/ens3@1,e9,int8`); default: one view, float. A BUNDLE_DIR (a folder with a
manifest.json, e.g. the shipped metaedge/reference/bundle) is measured as it is; its recipe and training cost
are not in the bundle, so its row says so.

For every candidate: export the run's best checkpoint to a bundle (with those settings; parity-checked as
`metaedge export` does), evaluate the bundle through ONNX Runtime and the native
kernels on the held-out alphabets, within-alphabet 20-way 1-shot with support and query by different drawers
(Lake et al.'s protocol, episodes seeded by --seed). Then, once every bundle exists, time `Runtime.classify` of
one image, decode to answer, against a 20-class on-disk gallery: `--rounds` rounds, each bundle in turn, the
median of its per-round p50s (so the machine's drift over a long run falls on every candidate alike). Prints one
row per candidate, marks the Pareto front (no other candidate at least as accurate and as fast, and strictly
better at one) and whether it meets issue 7's edge budget (classify p50 <= 2 ms, bundle < 20 MB).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from metaedge import bundle as bundle_io
from metaedge import checkpoint as ckpt
from metaedge.demo import SAMPLES
from metaedge.evaluate import evaluate_checkpoint
from metaedge.exporter import export_checkpoint
from metaedge.profiling.conditions import cpu_info
from metaedge.runtime import Runtime

BUDGET_MS, BUDGET_MB = 2.0, 20.0


def classify_p50_ms(bundle: Path, queries: int = 200) -> float:
    chars = sorted(p for p in (SAMPLES / "Korean").iterdir() if p.is_dir())[:20]
    with tempfile.TemporaryDirectory() as tmp, Runtime(bundle, Path(tmp) / "g.db") as rt:
        for c in chars:
            rt.enroll(c.name, sorted(c.glob("*.png"))[:1])
        pool = [p for c in chars for p in sorted(c.glob("*.png"))[1:]][:queries]
        rt.classify([pool[0]])  # the first inference allocates; steady state is what a camera loop sees
        ms = []
        for q in pool:
            t = time.perf_counter()
            rt.classify([q])
            ms.append(1e3 * (time.perf_counter() - t))
    return float(np.percentile(ms, 50))


def recipe(meta: dict) -> str:
    if meta.get("members"):  # an ensemble (metaedge ensemble): its members' recipes
        return " + ".join(f"[{recipe(m)}]" for m in meta["members"])
    c = meta.get("train_config") or {}
    depth = f" x{c['depth']} blocks" if c.get("depth", 4) != 4 else ""
    net = f"{c.get('backbone', '?')}-{c.get('width', '?')}{depth} @{c.get('image_size')}px"
    parts = [f"{c.get('algorithm', '?')} {net}",
             f"{c.get('way')}-way {c.get('shot')}-shot"]  # fmt: skip
    parts.append("rot" + ("+flip" if c.get("flips") else "") if c.get("rotations") else "no class aug")
    if c.get("augment"):
        parts.append("affine" + (f"+elastic {c['elastic']}" if c.get("elastic") else ""))
    if c.get("stroke_variants"):
        parts.append(f"strokes x{c['stroke_variants']}")
    if c.get("within_group"):
        parts.append(f"{c['within_group']:.0%} within-alphabet episodes")
    if c.get("seed"):
        parts.append(f"seed {c['seed']}")
    return ", ".join(parts)


def trained(meta: dict, key: str) -> float:
    """Episodes or seconds of training; an ensemble's are its members' added up."""
    if meta.get("members"):
        return sum(trained(m, key) for m in meta["members"])
    return meta.get(key) or 0


def parse_export(text: str) -> dict:
    """ "3,e9,int8" -> {"views": 3, "enroll_views": 9, "int8": True}."""
    settings = {"views": 1, "enroll_views": None, "int8": False}
    for item in filter(None, text.split(",")):
        if item == "int8":
            settings["int8"] = True
        elif item.startswith("e") and item[1:].isdigit():
            settings["enroll_views"] = int(item[1:])
        elif item.isdigit():
            settings["views"] = int(item)
        else:
            raise SystemExit(f"unknown export setting {item!r}: expected N, eN or int8")
    return settings


def describe(settings: dict) -> str:
    text = str(settings["views"])
    if settings["enroll_views"] not in (None, settings["views"]):
        text += f", enroll {settings['enroll_views']}"
    return text + (", int8" if settings["int8"] else "")


def measure(name: str, source: Path, export: str, episodes: int, seed: int, out: Path) -> dict:
    """Export (a run, to `out`) or take (a bundle) one candidate and score it; its classify time comes later."""
    if (source / bundle_io.MANIFEST).is_file():
        if export:
            raise SystemExit(f"{name}: {source} is a bundle, measured as it is; drop @{export}")
        bundle, settings = source, None
        model_id = bundle_io.load(source).model_id  # and its files checked against their hashes
        row = {"views": "as shipped", "recipe": f"bundle {model_id}", "episodes_trained": None, "train_minutes": None}
    else:
        settings = parse_export(export)
        loaded = ckpt.load(source)
        bundle = export_checkpoint(source, out, overwrite=True, parity_episodes=50, **settings).bundle.path
        row = {"views": describe(settings), "recipe": recipe(loaded.meta),
               "episodes_trained": trained(loaded.meta, "episode"),
               "train_minutes": trained(loaded.meta, "train_seconds") / 60}  # fmt: skip
    size_mb = sum(p.stat().st_size for p in bundle.iterdir()) / 2**20
    protocol = dict(way=20, shot=1, query=1, episodes=episodes, within_group=True, disjoint_drawers=True, seed=seed)
    result = evaluate_checkpoint(bundle, **protocol)
    return {
        "name": name, "run": str(source), "bundle": str(bundle), "export": settings, **row,
        "accuracy": result.accuracy, "ci95": result.ci95, "groups": result.groups, "eval_episodes": episodes,
        "eval_seed": seed, "bundle_mb": size_mb,
    }  # fmt: skip


def time_classify(rows: list[dict], rounds: int) -> None:
    """Each row's classify p50: the median over `rounds` rounds, the bundles in turn within each round."""
    for r in rows:
        r["classify_p50_rounds_ms"] = []
    for _ in range(rounds):
        for r in rows:
            r["classify_p50_rounds_ms"].append(classify_p50_ms(Path(r["bundle"])))
    for r in rows:
        r["classify_p50_ms"] = float(np.median(r["classify_p50_rounds_ms"]))


def mark_front(rows: list[dict]) -> None:
    for r in rows:  # dominated: another is at least as accurate and as fast, and strictly one of them
        better = [o for o in rows if o["accuracy"] >= r["accuracy"] and o["classify_p50_ms"] <= r["classify_p50_ms"]
                  and (o["accuracy"] > r["accuracy"] or o["classify_p50_ms"] < r["classify_p50_ms"])]  # fmt: skip
        r["pareto"] = not better
        r["within_budget"] = r["classify_p50_ms"] <= BUDGET_MS and r["bundle_mb"] < BUDGET_MB


def cost(row: dict) -> str:
    if row["train_minutes"] is None:
        return "not in the bundle"
    return f"{row['episodes_trained']} episodes, {row['train_minutes']:.0f} min"


def markdown(rows: list[dict]) -> str:
    lines = ["| candidate | recipe | trained | views | 20-way 1-shot within-alphabet | classify p50 | bundle | front |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in sorted(rows, key=lambda r: r["classify_p50_ms"]):
        mark = ("Pareto" if r["pareto"] else "") + ("" if r["within_budget"] else " (over budget)")
        lines.append(
            f"| {r['name']} | {r['recipe']} | {cost(r)} | "
            f"{r['views']} | {100 * r['accuracy']:.2f}% ± {100 * r['ci95']:.2f} | {r['classify_p50_ms']:.2f} ms | "
            f"{r['bundle_mb']:.2f} MB | {mark.strip()} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidate", action="append", required=True, help="NAME=RUN_DIR[@EXPORT] or NAME=BUNDLE_DIR")
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="evaluation episodes' seed")
    ap.add_argument("--rounds", type=int, default=3, help="classify timing rounds over all candidates")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    # Latencies belong to a CPU: the dev VM has been an AMD EPYC and an Intel Xeon, 1.6-2.5x apart (BENCHMARKS.md).
    machine = cpu_info()
    print(f"CPU: {machine['model']}, {machine['usable_cores']} usable cores, load {machine['load_average_1m']}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="metaedge-pareto-") as tmp:
        for index, spec in enumerate(args.candidate):  # one folder each: a name may come back with other views
            name, _, target = spec.partition("=")
            source, _, export = target.partition("@")
            row = measure(name, Path(source), export, args.episodes, args.seed, Path(tmp) / str(index))
            print(f"{name}: {100 * row['accuracy']:.2f}% ± {100 * row['ci95']:.2f}, {row['bundle_mb']:.2f} MB",
                  flush=True)  # fmt: skip
            rows.append(row)
        time_classify(rows, args.rounds)
    for r in rows:
        print(f"{r['name']}: classify p50 {r['classify_p50_ms']:.2f} ms (rounds: "
              f"{', '.join(f'{ms:.2f}' for ms in r['classify_p50_rounds_ms'])})")  # fmt: skip
    mark_front(rows)
    table = markdown(rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"cpu": machine, "candidates": rows}, indent=2))
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
