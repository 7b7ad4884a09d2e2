#!/usr/bin/env python
"""What a backbone costs on this machine, measured in one run against Conv4-128 (the shipped members' network).

    python scripts/bench_backbones.py [--backbone NAME:WIDTH ...] [--repeats 5] [--threads N]

For each backbone: the seconds of one training step of a 60-way 1-shot 5-query episode (360 images of 28x28,
forward and backward, channels-last as metaedge/train.py runs it), the PyTorch float milliseconds to embed one
image in eval mode, parameters, and the ratio of each time to Conv4-128's. Medians of --repeats rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from metaedge.models import create_backbone

BASELINE = "conv4:128"


def measure(spec: str, repeats: int) -> dict:
    name, width = spec.split(":")
    net = create_backbone(name, in_channels=1, width=int(width)).to(memory_format=torch.channels_last)
    x = torch.rand(360, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    one = x[:1]
    steps, singles = [], []
    for _ in range(repeats + 1):  # the first round warms up oneDNN's kernel choice and is dropped
        net.train()
        t = time.perf_counter()
        emb = net(x)
        # a stand-in loss with the same backward cost as ProtoNet's (every embedding gets a gradient)
        F.mse_loss(emb, torch.zeros_like(emb)).backward()
        steps.append(time.perf_counter() - t)
        net.eval()
        with torch.no_grad():
            t = time.perf_counter()
            for _ in range(20):
                net(one)
            singles.append((time.perf_counter() - t) / 20 * 1000)
    return {
        "backbone": spec,
        "parameters": sum(p.numel() for p in net.parameters()),
        "embedding_dim": net.embedding_dim,
        "train_step_s": statistics.median(steps[1:]),
        "embed_one_ms": statistics.median(singles[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", action="append", help="NAME:WIDTH, e.g. resnet12:16 (repeatable)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [BASELINE, *(args.backbone or ["resnet12:16", "resnet12:32", "resnet12:64"])]
    rows = [measure(s, args.repeats) for s in specs]
    base = rows[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ratios against {BASELINE}")
    print(f"{'backbone':<14} {'params':>10} {'dim':>5} {'train step s':>13} {'x':>6} {'embed 1 ms':>11} {'x':>6}")
    for r in rows:
        print(f"{r['backbone']:<14} {r['parameters']:>10,} {r['embedding_dim']:>5} {r['train_step_s']:>13.3f} "
              f"{r['train_step_s'] / base['train_step_s']:>6.1f} {r['embed_one_ms']:>11.2f} "
              f"{r['embed_one_ms'] / base['embed_one_ms']:>6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
