"""Open-set figures of a bundle on issue 20's protocol: accept and reject rates per number of shots, and AUROC.

    python scripts/open_set_report.py [--bundle DIR] [--enrolled Greek] [--strangers Korean] [--drawers 11-20]
                                      [--shots 1,5] [--way 20] [--episodes 10] [--json]

Each episode enrolls `--way` characters of `--enrolled` from `shot` drawings by the same drawers, classifies
every other drawing of them (genuine queries) and every drawing of `--strangers` by the other drawers
(strangers). Images come from `--drawers` only: by default the drawers the bundle's calibration did not read,
so the figures are measured on drawings the thresholds never saw. Prints, per number of shots, the bundle's
threshold for it, the genuine accept rate and stranger reject rate (+- standard error clustered by drawer),
the known-vs-stranger AUROC, and the same rates under the single threshold older metaedge applied to every class.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from metaedge import bundle as bundle_io
from metaedge.errors import MetaedgeError
from metaedge.open_set import calibration_data, embed_with_bundle, measure, parse_drawers
from metaedge.runtime import REFERENCE_BUNDLE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(REFERENCE_BUNDLE))
    parser.add_argument("--data", action="append", help="dataset root (repeat); default: the bundle's training roots")
    parser.add_argument("--enrolled", default="Greek")
    parser.add_argument("--strangers", default="Korean")
    parser.add_argument("--drawers", help="e.g. 11-20; default: those the calibration did not read, else all")
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--way", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    bundle = bundle_io.load(args.bundle)
    open_set = bundle.manifest.get("open_set") or {}
    if args.drawers:
        drawers = parse_drawers(args.drawers)
    else:
        used = set((open_set.get("data") or {}).get("drawers") or [])
        drawers = [d for d in range(1, 21) if d not in used] if used else None
    data, _ = calibration_data(bundle.manifest, args.data, [args.enrolled, args.strangers], drawers)
    queries, support = embed_with_bundle(bundle, data)
    shots = [int(s) for s in args.shots.split(",")]
    common = dict(enrolled_group=args.enrolled, stranger_group=args.strangers, shots=shots, way=args.way,
                  episodes=args.episodes, seed=args.seed)  # fmt: skip
    curve = measure(queries, support, data, bundle.metric, open_set, **common)
    single = {"threshold": open_set["threshold"]} if "threshold" in open_set else None
    legacy = measure(queries, support, data, bundle.metric, single, **common)
    report = {"bundle": str(bundle.path), "model_id": bundle.model_id, "drawers": drawers, "curve": curve,
              "single_threshold": legacy, "calibration": open_set.get("data"),
              "seconds": time.perf_counter() - t0}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{bundle.model_id}: {args.way} {args.enrolled} characters enrolled, strangers {args.strangers}, "
          f"{args.episodes} episodes, drawers {drawers or 'all'}; calibration data {open_set.get('data')}")
    print("shots  threshold   genuine accepted   strangers rejected   AUROC  | single threshold: accept  reject")
    for row, old in zip(curve, legacy):
        if row["threshold"] is None:
            print(f"{row['shots']:>5}  (no threshold)  AUROC {row['auroc']:.4f}")
            continue
        print(f"{row['shots']:>5}  {row['threshold']:>9.4f}   {100 * row['accept_rate']:5.1f}% +- "
              f"{100 * row['accept_se']:.1f}     {100 * row['reject_rate']:5.1f}% +- {100 * row['reject_se']:.1f}"
              f"       {row['auroc']:.4f} |                   {100 * old.get('accept_rate', float('nan')):5.1f}%"
              f"  {100 * old.get('reject_rate', float('nan')):5.1f}%")  # fmt: skip
    print(f"({row['known_queries']} genuine and {row['stranger_queries']} stranger scores per number of shots; "
          f"{report['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MetaedgeError as e:
        sys.exit(f"error: {e}")
