"""Rewrite the sampled test-time views (GridSample) of existing bundles' enrollment graphs as the exporter now
writes them, in place: a shift or zoom becomes two small constant matrix products, a rotation keeps its grid.

Bundles exported before the separable form (54ab01a) carry one GridSample over every view, which ONNX Runtime runs
10-20x slower than the products. Nothing else in the graph changes (its int8 parameters included), so the model id
stays; the warped images must agree within metaedge.onnx_views.WARP_ATOL and the embeddings within MIN_COSINE
before anything is rewritten. The manifest's sha256, sizes and digest follow. metaedge/onnx_views.py does the work.

    python scripts/separable_views.py metaedge/reference/ensemble [more bundles...]
"""

from __future__ import annotations

import argparse
import sys

from metaedge.errors import MetaedgeError
from metaedge.onnx_views import separate_bundle_views


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", help="bundle directories to rewrite in place")
    ap.add_argument("--check-images", type=int, default=64, help="random inputs for the before/after check")
    args = ap.parse_args()
    for path in args.bundles:
        try:
            report = separate_bundle_views(path, check_images=args.check_images)
        except MetaedgeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{report.bundle / report.file}: {report.views} views at {report.size} px, {report.nodes[0]} -> "
              f"{report.nodes[1]} nodes; warped images max |diff| {report.warp_max_diff:.2g}, embeddings min cosine "
              f"{report.min_cosine:.6f}; manifest hashes updated")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
