#!/usr/bin/env python
"""Which members of an ensemble to keep: every subset of its members on the SAME seeded episodes, each with its
accuracy and its paired difference from a reference subset (95% CIs), best first.

    metaedge ensemble RUN_A RUN_B ... --out runs/all          # every candidate, combined once
    python scripts/ensemble_search.py runs/all --reference 0,1,2 [--min-members 2] [--max-members 8]
        [--enroll-views 3] [--way 20 --shot 1 --query 1 --episodes 2000 --seed 1] [--within-group]
        [--disjoint-drawers] [--top 25]

Every image is embedded once by the combined network (PyTorch, float); with squared euclidean distances the
ensemble of a subset is the same network with only that subset's embedding columns, so each subset costs only
its prototype arithmetic. Members keep the scale `metaedge ensemble` gave them; members of a smaller input
size read the combined network's input average-pooled, as they would in any ensemble holding a larger member.
Trying many subsets on one episode set overfits that set: choose here on one seed, then report the chosen
ensemble, exported, on other seeds (`metaedge evaluate BUNDLE --seed S`, `scripts/paired_compare.py`).
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from metaedge import checkpoint as ckpt
from metaedge.evaluate import _held_out, embed_all, eval_sampler, mean_ci95


def episode_arrays(data, args) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The seeded episodes as index arrays: support (E, way*shot), support labels, query (E, way*query), labels."""
    sampler = eval_sampler(data, args.way, args.shot, args.query, within_group=args.within_group,
                           disjoint_drawers=args.disjoint_drawers, seed=args.seed)  # fmt: skip
    eps = list(sampler.episodes(args.episodes))
    return tuple(np.stack([getattr(ep, k) for ep in eps]) for k in ("support", "support_labels", "query",
                                                                    "query_labels"))  # fmt: skip


def accuracies(support: np.ndarray, queries: np.ndarray, episodes, way: int) -> np.ndarray:
    """Per-episode accuracy of squared-euclidean prototypes: support/queries float32 (num_images, D) -> (E,)."""
    s_idx, s_lab, q_idx, q_lab = episodes
    onehot = np.eye(way, dtype=np.float32)[s_lab]  # (E, S, way)
    protos = np.einsum("esw,esd->ewd", onehot, support[s_idx]) / onehot.sum(axis=1)[:, :, None]  # (E, way, D)
    q = queries[q_idx]  # (E, Q, D)
    # |q - p|^2 without |q|^2, which is the same for every class of a query
    dist = (protos**2).sum(-1)[:, None, :] - 2 * np.einsum("eqd,ewd->eqw", q, protos)
    return (dist.argmin(axis=2) == q_lab).mean(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ensemble", help="run directory written by `metaedge ensemble` with every candidate member")
    ap.add_argument("--reference", required=True, help="comma-separated member indices: the subset to beat")
    ap.add_argument("--min-members", type=int, default=2)
    ap.add_argument("--max-members", type=int, default=None)
    ap.add_argument("--enroll-views", type=int, default=None, help="support images through this many views")
    ap.add_argument("--way", type=int, default=20)
    ap.add_argument("--shot", type=int, default=1)
    ap.add_argument("--query", type=int, default=1)
    ap.add_argument("--episodes", type=int, default=2000)
    ap.add_argument("--within-group", action="store_true")
    ap.add_argument("--disjoint-drawers", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()

    loaded = ckpt.load(args.ensemble)
    if loaded.meta["backbone"]["name"] != "ensemble":
        raise SystemExit(f"{args.ensemble}: not a squared-euclidean ensemble written by `metaedge ensemble`")
    if args.enroll_views is not None:
        loaded.set_enroll_views(args.enroll_views)
    members = loaded.meta["backbone"]["kwargs"]["members"]
    dims = [net.embedding_dim for net in loaded.method.backbone.members]
    bounds = np.cumsum([0, *dims])
    names = [m["checkpoint"] for m in loaded.meta["members"]]
    for i, (name, m) in enumerate(zip(names, members, strict=True)):
        print(f"[{i}] {name}: {m['name']} at {m['size']} px, {dims[i]} dims, scale {m['scale']:.3g}")

    data = _held_out(loaded.meta, args.ensemble, None, None).load(loaded.preprocess)
    queries = embed_all(loaded.method, data)
    support = embed_all(loaded.method, data, support=True) if args.enroll_views else queries
    episodes = episode_arrays(data, args)

    def columns(subset):
        return np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in subset])

    def run(subset):
        cols = columns(subset)
        return accuracies(support[:, cols], queries[:, cols], episodes, args.way)

    reference = tuple(int(i) for i in args.reference.split(","))
    base = run(reference)
    top = args.max_members or len(members)
    rows = []
    for k in range(args.min_members, top + 1):
        for subset in itertools.combinations(range(len(members)), k):
            accs = run(subset)
            rows.append((mean_ci95(accs), mean_ci95(accs - base), subset))
    rows.sort(key=lambda r: -r[0][0])
    mean, ci = mean_ci95(base)
    print(f"reference {reference}: {100 * mean:.2f}% ± {100 * ci:.2f} ({args.episodes} episodes, seed {args.seed})")
    print(f"{'members':<28} {'accuracy':>16} {'vs reference':>16}")
    for (mean, ci), (diff, dci), subset in rows[: args.top]:
        members_text = ",".join(map(str, subset))
        print(f"{members_text:<28} {100 * mean:>8.2f}% ± {100 * ci:.2f} {100 * diff:>+8.2f} ± {100 * dci:.2f}")


if __name__ == "__main__":
    main()
