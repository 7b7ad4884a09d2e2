"""Strip the exporter's per-node metadata (stack traces naming the build machine) from existing bundles, in place.

Bundles exported before metaedge stripped it at export time carry it; the graphs' computation is unchanged,
so the model id stays, and ONNX Runtime must give bit-identical embeddings before and after (checked before
anything is rewritten). The manifest's sha256, sizes and digest follow. metaedge/onnx_clean.py does the work.

    python scripts/strip_bundle_metadata.py metaedge/reference/bundle [more bundles...]
"""

from __future__ import annotations

import argparse
import sys

from metaedge.errors import MetaedgeError
from metaedge.onnx_clean import strip_bundle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", help="bundle directories to strip in place")
    ap.add_argument("--check-images", type=int, default=8, help="random inputs for the bit-identity check")
    args = ap.parse_args()
    for path in args.bundles:
        try:
            report = strip_bundle(path, check_images=args.check_images)
        except MetaedgeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        for name, (before, after, removed) in report.files.items():
            print(f"{report.bundle / name}: {before:,} -> {after:,} bytes, {removed} metadata entries removed")
        print(f"{report.bundle}: {'rewritten, manifest hashes updated' if report.changed else 'already clean'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
