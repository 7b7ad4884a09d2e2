"""How many calibration images an int8 backbone needs: min cosine of the int8 graph's embeddings to the float
graph's over the checkpoint's held-out images, for several calibration sample sizes and sampling seeds.

MinMax ranges are the extremes of the calibration images; too few miss the rarer, larger activations and clip
them (issue 18: a pre-trained ResNet-18 on CIFAR photos had two of 2,400 held-out photos below the int8 gate's
0.98 at 512 images, none from 1024 on). Prints one row per size and seed, with the int8 gate's verdict on the
cosine alone (agreement is `metaedge export --int8`'s to check).

    python scripts/int8_calibration_size.py RUN FP32_BUNDLE [--sizes 512,1024,2048] [--seeds 0,1,2]

RUN: the training run; FP32_BUNDLE: `metaedge export RUN --out FP32_BUNDLE` (its backbone.onnx is quantized).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from metaedge import checkpoint as ckpt
from metaedge import quantize
from metaedge.exporter import calibration_pool, verification_data
from metaedge.ort import create_session, run_batched
from metaedge.parity import TOLERANCES, row_cosines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("fp32_bundle", type=Path)
    parser.add_argument("--sizes", default="512,1024,2048")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    loaded = ckpt.load(args.run)
    spec = loaded.preprocess
    pool = calibration_pool(loaded, None)
    held_out = spec.normalize(verification_data(loaded, None).pixels)
    graph = args.fp32_bundle / "backbone.onnx"
    session = create_session(graph)
    reference, input_name = run_batched(session, held_out), session.get_inputs()[0].name
    gate = TOLERANCES["int8"]["min_cosine"]
    print(f"{len(pool)} training images to sample from; {len(held_out)} held-out images; int8 gate min cosine {gate}")
    print("images  seed  min_cos  p0.1_cos  median_cos  below_gate  seconds")
    with tempfile.TemporaryDirectory(prefix="metaedge-calibration-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                start = time.perf_counter()
                sample = spec.normalize(quantize.calibration_sample(pool, size, seed))
                out = Path(tmp) / f"int8-{size}-{seed}.onnx"
                quantize.quantize_int8(graph, out, sample, input_name)
                cos = row_cosines(reference, run_batched(create_session(out), held_out))
                low, p01, mid = np.percentile(cos, [0, 0.1, 50])
                below = int((cos < gate).sum())
                print(f"{len(sample):6d}  {seed:4d}  {low:.4f}  {p01:.4f}    {mid:.4f}      {below:6d}"
                      f"  {time.perf_counter() - start:7.1f}", flush=True)  # fmt: skip
                if len(sample) == len(pool):  # every image: the seed changes nothing
                    break


if __name__ == "__main__":
    main()
