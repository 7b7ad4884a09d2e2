"""Open-set calibration: per number of shots, the similarity below which the device answers "unknown".

A class enrolled from one drawing has a noisier prototype than one enrolled from five, so its genuine queries
score lower: one threshold cannot serve both (issue 20: the 5-shot threshold turned away 23% of genuine
one-shot queries). The manifest records a curve, one threshold per number of shots, and Runtime.classify
applies the one for the class each query would be answered with.

Which images calibrate: classes the model never trained on, and if possible not the ones evaluation reports.
The exporter uses the checkpoint's validation groups where it has them (model selection looked at them, the
weights never did), else the held-out test groups, saying so (`data.part`: "val", "test" or "given").
`recalibrate_bundle` can also keep to some drawers: the shipped reference bundle trained on every alphabet
but Greek and Korean, so it is calibrated on their drawers 1-10 and its tests and benchmarks read drawers
11-20, other people's drawings of the same characters (the classes are shared, the images are not).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np

from metaedge import kernels
from metaedge.data import EpisodeSampler, LoadedDataset, open_dataset
from metaedge.errors import DataError, MetaedgeError

SHOTS = (1, 2, 3, 4, 5)  # enrolled images per class calibrated at export; a class with more uses the largest
ACCEPT_RATE = 0.95  # share of queries from enrolled classes each threshold lets through


class CalibrationError(MetaedgeError):
    """Calibration data that cannot calibrate (too few classes or images), or a bundle that cannot be recalibrated."""


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Area under the ROC curve of telling `positives` (N,) from `negatives` (M,) by score, ties counting half.

    The Mann-Whitney statistic from average ranks: the probability that a random positive outscores a random
    negative. 1.0 separates them perfectly; 0.5 is chance, where no threshold can tell them apart.
    """
    positives, negatives = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    if not len(positives) or not len(negatives):
        raise CalibrationError("AUROC needs at least one positive and one negative score")
    _, inverse, counts = np.unique(np.concatenate([positives, negatives]), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # 1-based, tied values share their mean rank
    n, m = len(positives), len(negatives)
    return float((ranks[:n].sum() - n * (n + 1) / 2.0) / (n * m))


def people(data: LoadedDataset) -> np.ndarray:
    """int64 (num_images,): who made each image, numbered: a (group, drawer) pair (Omniglot's drawers of two
    alphabets are not known to be the same people), or the image's class where drawers are unknown."""
    if (data.drawers < 0).any():
        return data.labels.copy()
    group_ids = np.unique(np.asarray(data.class_groups), return_inverse=True)[1]
    return np.unique(np.stack([group_ids[data.labels], data.drawers], axis=1), axis=0, return_inverse=True)[1]


def jackknife_rate(hits: np.ndarray, involved: np.ndarray) -> tuple[float, float]:
    """The rate of `hits` (bool (N,)) and its standard error by leaving out one person at a time.

    involved: int (N, W), the people each score depends on (the query's drawer and the episode's support
    drawers; -1 pads). A person's style moves every score they take part in, so the independent units are
    people, not scores: counting scores would claim a precision ten drawers cannot give. NaN with < 2 people.
    """
    hits = np.asarray(hits, dtype=bool)
    rate = float(hits.mean())
    ids = np.unique(involved[involved >= 0])
    rates = [hits[keep].mean() for keep in (~(involved == p).any(axis=1) for p in ids) if keep.any()]
    if len(rates) < 2:
        return rate, float("nan")
    n, rates = len(rates), np.asarray(rates)
    return rate, float(np.sqrt((n - 1) / n * np.sum((rates - rates.mean()) ** 2)))


def _involved(who: np.ndarray, rows: np.ndarray, support_people: np.ndarray) -> np.ndarray:
    """(len(rows), 1 + S): each score's query person, then the episode's support people."""
    return np.column_stack([who[rows], np.broadcast_to(support_people, (len(rows), len(support_people)))])


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    """Episodes' (n_i, W_i) involvement tables as one (sum n_i, max W_i), padded with -1."""
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=-1) for r in rows])


def _best_scores(queries: np.ndarray, protos: np.ndarray, metric: str) -> np.ndarray:
    # Scale 1 (cosine similarity, or minus the squared distance), as Runtime.classify scores a query.
    return kernels.logits(queries, protos, metric=metric, scale=1.0).max(axis=1)


def calibrate_curve(
    embeddings: np.ndarray,
    data: LoadedDataset,
    metric: str,
    *,
    support_embeddings: np.ndarray | None = None,
    shots: Sequence[int] = SHOTS,
    way: int = 20,
    query: int = 5,
    strangers: int = 5,
    episodes: int = 100,
    accept_rate: float = ACCEPT_RATE,
    seed: int = 0,
    source: dict | None = None,
) -> dict:
    """The manifest's `open_set`: for each number of shots per class, the threshold that accepts `accept_rate` of
    the queries from enrolled classes, how often it rejects strangers, and how well the scores separate the two.

    embeddings: float32 (num_images, D), the query graph's embeddings of `data`'s images; support_embeddings:
    the enrollment graph's of the same images, where a bundle has one. `data` should be classes the model never
    trained on (the exporter passes the validation groups where the checkpoint has them).
    Each episode enrolls `way` classes of one group from `shot` images by the same drawers (as a user enrolls
    characters written by one person), queries `query` images per class by other drawers, and draws strangers
    from `strangers` classes of the other groups (of the same group where there is only one), by other drawers
    too. A score is a query's best similarity to an enrolled prototype, as the runtime computes it.
    source: what to record about where `data` came from (part, drawers).
    """
    support = embeddings if support_embeddings is None else support_embeddings
    if not 0.0 < accept_rate < 1.0:
        raise CalibrationError(f"accept_rate must be between 0 and 1, got {accept_rate}")
    if not shots or min(shots) < 1:
        raise CalibrationError(f"shots must be positive integers, got {list(shots)}")
    groups = sorted(set(data.class_groups))
    across = len(groups) > 1  # strangers from other groups; a single group lends its own other classes
    by_drawer = bool((data.drawers >= 0).all()) and len(np.unique(data.drawers)) > 1
    who = people(data)
    curve, ways, kinds = [], [], []
    for shot in sorted(set(int(s) for s in shots)):
        try:
            entry = _entry(embeddings, support, data, metric, who, shot, way, query, strangers, episodes,
                           accept_rate, across, by_drawer, seed)  # fmt: skip
        except DataError as e:  # the sampler's: too few drawings by other drawers, ...
            raise CalibrationError(f"{shot}-shot calibration: {e}") from None
        ways.append(entry.pop("way"))
        kinds.append(entry.pop("strangers"))
        curve.append(entry)
    largest = curve[-1]
    strangers_from = "classes of the other groups" if across else "other classes of the group"
    return {
        # The single threshold older metaedge applies to every class: the largest calibrated number of shots.
        "threshold": largest["threshold"],
        "known_accept_rate": largest["known_accept_rate"],
        "unknown_reject_rate": largest["unknown_reject_rate"],
        "accept_rate": accept_rate,
        "curve": curve,
        "more_shots": "a class with more shots than the curve's largest entry uses that entry",
        "protocol": f"{min(ways)}-way within one group, support by the same drawers, {query} queries per class by "
        f"other drawers; strangers: {min(kinds)} {strangers_from} x {query} images by other drawers; "
        f"{episodes} episodes per number of shots",
        "data": {"groups": groups, "classes": data.num_classes, "images": len(data.labels), **(source or {})},
        "calibrated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _entry(embeddings: np.ndarray, support: np.ndarray, data: LoadedDataset, metric: str, who: np.ndarray,
           shot: int, way: int, query: int, strangers: int, episodes: int, accept_rate: float, across: bool,
           by_drawer: bool, seed: int) -> dict:  # fmt: skip
    """One point of the curve (see calibrate_curve), with the `way` its episodes could enroll."""
    enrolled_way, sampler = _sampler(data, shot, query, way, strangers, across, by_drawer, seed)
    rng = np.random.default_rng([seed, shot, 2])  # its own stream: strangers do not shift the episodes' draws
    known, known_by, foreign, foreign_by = [], [], [], []
    for ep in sampler.episodes(episodes):
        mine = ep.support_labels < enrolled_way
        protos = kernels.prototypes(support[ep.support[mine]], ep.support_labels[mine], enrolled_way,
                                    normalize=metric == "cosine")  # fmt: skip
        q = ep.query[ep.query_labels < enrolled_way]
        s = (_strangers(data, ep, enrolled_way, strangers, query, by_drawer, rng) if across
             else ep.query[ep.query_labels >= enrolled_way])  # fmt: skip
        known.append(_best_scores(embeddings[q], protos, metric))
        foreign.append(_best_scores(embeddings[s], protos, metric))
        # Who each score depends on, for the standard errors: its query's drawer and the support drawers.
        sup = np.unique(who[ep.support[mine]]) if by_drawer else np.zeros(0, np.int64)
        known_by.append(_involved(who, q, sup))
        foreign_by.append(_involved(who, s, sup))
    known, foreign = np.concatenate(known), np.concatenate(foreign)
    threshold = float(np.quantile(known, 1.0 - accept_rate))
    accepted, accepted_se = jackknife_rate(known >= threshold, _stack(known_by))
    rejected, rejected_se = jackknife_rate(foreign < threshold, _stack(foreign_by))
    return {"shots": shot, "threshold": threshold, "known_accept_rate": accepted, "known_accept_se": accepted_se,
            "unknown_reject_rate": rejected, "unknown_reject_se": rejected_se, "auroc": auroc(known, foreign),
            "known_queries": len(known), "stranger_queries": len(foreign), "way": enrolled_way,
            "strangers": strangers if across else sampler.way - enrolled_way}  # fmt: skip


def _sampler(data: LoadedDataset, shot: int, query: int, way: int, strangers: int, across: bool, by_drawer: bool,
             seed: int) -> tuple[int, EpisodeSampler]:  # fmt: skip
    """(classes enrolled per episode, a within-group sampler), `way` reduced to what the largest group can serve."""
    need = shot + query
    sizes: dict[str, int] = {}
    for c, group in enumerate(data.class_groups):
        images = data.labels == c
        if images.sum() >= need and (not by_drawer or len(np.unique(data.drawers[images])) > shot):
            sizes[group] = sizes.get(group, 0) + 1
    largest = max(sizes.values(), default=0)
    if not across:  # one small group (4 held-out CIFAR classes): enroll 2 at least, the rest up to `strangers` lend
        strangers = max(1, min(strangers, largest - 2))
    enrolled = min(way, largest if across else largest - strangers)
    if enrolled < 2:
        raise CalibrationError(
            f"{shot}-shot calibration needs a group with 2 classes of {need} images (by {shot + 1} drawers) "
            f"{'and another group for strangers' if across else f'plus {strangers} stranger classes'}; "
            f"usable classes per group: {sizes or 'none'}"
        )
    total = enrolled if across else enrolled + strangers
    sampler = EpisodeSampler(data.labels, data.class_groups, total, shot, query, drawers=data.drawers,
                             within_group=True, disjoint_drawers=by_drawer, seed=seed)  # fmt: skip
    return enrolled, sampler


def _strangers(data: LoadedDataset, ep, way: int, strangers: int, query: int, by_drawer: bool,
               rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Image indices of `strangers` classes from groups other than the episode's, by drawers not in its support."""
    group = data.class_groups[int(ep.classes[0])]
    others = np.asarray([c for c, g in enumerate(data.class_groups) if g != group])
    support_drawers = np.unique(data.drawers[ep.support[ep.support_labels < way]])
    picked = []
    for c in rng.choice(others, size=min(strangers, len(others)), replace=False):
        images = np.flatnonzero(data.labels == c)
        if by_drawer:
            images = images[~np.isin(data.drawers[images], support_drawers)]
        picked.append(rng.choice(images, size=min(query, len(images)), replace=False))
    return np.concatenate(picked)


def measure(
    queries: np.ndarray,
    support: np.ndarray,
    data: LoadedDataset,
    metric: str,
    open_set: dict | None,
    *,
    enrolled_group: str,
    stranger_group: str,
    shots: Sequence[int] = (1, 5),
    way: int = 20,
    episodes: int = 10,
    seed: int = 0,
) -> list[dict]:
    """How a bundle's thresholds do on one protocol (issue 20's): enroll `way` classes of `enrolled_group` from
    `shot` images by the same drawers, query every other drawing of those classes, and every drawing of
    `stranger_group` by the other drawers as strangers. One dict per number of shots.

    queries, support: float32 (num_images, D), the query and enrollment graphs' embeddings of `data`'s images.
    Returns the threshold used (threshold_for), the accept rate of genuine queries and the reject rate of
    strangers (pooled over episodes, with jackknife standard errors over drawers, and their spread from episode to
    episode), and the AUROC of genuine against stranger scores, which no threshold can raise.
    """
    if (data.drawers < 0).any():
        raise CalibrationError("measuring needs the drawer of every image (Omniglot's _NN file suffix)")
    groups = np.asarray(data.class_groups)
    mine = np.flatnonzero(groups == enrolled_group)
    foreign_images = np.flatnonzero(groups[data.labels] == stranger_group)
    if not len(mine) or not len(foreign_images):
        raise CalibrationError(f"no images of group {enrolled_group!r} or {stranger_group!r} in the data")
    drawers = np.unique(data.drawers[np.isin(data.labels, mine)])
    who = people(data)
    out = []
    for shot in shots:
        threshold = threshold_for(open_set, shot)
        known, known_by, foreign, foreign_by, per_episode = [], [], [], [], []
        for e in range(episodes):
            rng = np.random.default_rng([seed, shot, e])
            chosen = rng.choice(drawers, size=shot, replace=False)
            # Classes with a drawing by every support drawer and at least one by another drawer.
            ok = [c for c in mine if np.isin(chosen, data.drawers[data.labels == c]).all()
                  and (~np.isin(data.drawers[data.labels == c], chosen)).any()]  # fmt: skip
            if len(ok) < way:
                raise CalibrationError(f"{enrolled_group}: {len(ok)} classes have drawings by drawers "
                                       f"{chosen.tolist()} and others; {way} needed")  # fmt: skip
            classes = rng.choice(ok, size=way, replace=False)
            by_support = np.isin(data.drawers, chosen)
            support_idx = [np.flatnonzero((data.labels == c) & by_support) for c in classes]
            protos = kernels.prototypes(support[np.concatenate(support_idx)],
                                        np.repeat(np.arange(way), [len(i) for i in support_idx]), way,
                                        normalize=metric == "cosine")  # fmt: skip
            q = np.flatnonzero(np.isin(data.labels, classes) & ~by_support)
            s = foreign_images[~by_support[foreign_images]]
            known.append(_best_scores(queries[q], protos, metric))
            foreign.append(_best_scores(queries[s], protos, metric))
            sup = np.unique(who[np.concatenate(support_idx)])
            known_by.append(_involved(who, q, sup))
            foreign_by.append(_involved(who, s, sup))
            if threshold is not None:
                per_episode.append(((known[-1] >= threshold).mean(), (foreign[-1] < threshold).mean()))
        known, foreign = np.concatenate(known), np.concatenate(foreign)
        row = {"shots": int(shot), "threshold": threshold, "episodes": episodes, "known_queries": len(known),
               "stranger_queries": len(foreign), "auroc": auroc(known, foreign)}  # fmt: skip
        if threshold is not None:
            row["accept_rate"], row["accept_se"] = jackknife_rate(known >= threshold, _stack(known_by))
            row["reject_rate"], row["reject_se"] = jackknife_rate(foreign < threshold, _stack(foreign_by))
            spread = np.std(np.asarray(per_episode), axis=0, ddof=1) if episodes > 1 else (np.nan, np.nan)
            row["episode_accept_sd"], row["episode_reject_sd"] = float(spread[0]), float(spread[1])
        out.append(row)
    return out


def threshold_for(open_set: dict | None, shots: int) -> float | None:
    """The threshold for a class enrolled from `shots` images: the curve's entry for the largest calibrated
    number of shots not above `shots` (the smallest entry below it); the single `threshold` of a bundle
    calibrated before curves; None where the bundle has no calibration."""
    if not open_set:
        return None
    curve = open_set.get("curve")
    if not curve:
        return open_set.get("threshold")
    entries = sorted(curve, key=lambda e: e["shots"])
    fitting = [e for e in entries if e["shots"] <= shots]
    return float((fitting[-1] if fitting else entries[0])["threshold"])


def parse_drawers(text: str) -> list[int]:
    """"1-10,15" -> [1, ..., 10, 15]: the drawers (Omniglot's `_NN` file suffix) whose images calibrate."""
    drawers: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi or lo)
            if first < 1 or last < first:
                raise ValueError
            drawers.update(range(first, last + 1))
    except ValueError:
        raise CalibrationError(f"drawers {text!r}: expected numbers and ranges such as 1-10,15") from None
    if not drawers:
        raise CalibrationError("drawers: none given")
    return sorted(drawers)


def calibration_data(manifest: dict, roots: Sequence[str | os.PathLike] | None = None,
                     groups: Sequence[str] | None = None, drawers: Sequence[int] | None = None,
                     ) -> tuple[LoadedDataset, dict]:  # fmt: skip
    """Images to calibrate a bundle on, decoded with its preprocessing, and what the manifest records about them.

    roots: dataset roots (default: the ones the model trained from, as the manifest names them). groups:
    default the validation groups of the model's split, where it has any (never trained on, and not what
    evaluation reports), else its held-out test groups (the only other classes it never saw: the manifest
    then says so, part "test"). drawers: only images by these drawers, so that tests and benchmarks can keep
    the other drawers' images unseen by the calibration.
    """
    from metaedge.data.preprocess import PreprocessSpec

    split = (manifest.get("training") or {}).get("split") or {}
    roots = [str(r) for r in roots] if roots else ((manifest.get("training") or {}).get("data") or {}).get("roots")
    if not roots:
        raise CalibrationError("the bundle names no training data; give the calibration images' roots")
    if groups:
        part = "given"
    elif split.get("val"):
        groups, part = split["val"], "val"
    elif split.get("test"):
        groups, part = split["test"], "test"
    else:
        raise CalibrationError("the bundle's split names no validation or test groups; give the groups to use")
    try:
        dataset = open_dataset(roots).subset(groups)
    except MetaedgeError as e:
        raise CalibrationError(f"cannot read the calibration images ({e})") from None
    if drawers:
        wanted = set(int(d) for d in drawers)
        classes = [replace(c, images=tuple(r for r in c.images if r.drawer in wanted)) for c in dataset.classes]
        dataset = replace(dataset, classes=[c for c in classes if c.images])
        if not dataset.classes:
            raise CalibrationError(f"no image of groups {list(groups)} is by drawers {sorted(wanted)}")
    data = dataset.load(PreprocessSpec.from_dict(manifest["preprocess"]))
    return data, {"part": part, "drawers": sorted(set(int(d) for d in drawers)) if drawers else None}


def recalibrate_bundle(
    bundle_dir: str | os.PathLike,
    roots: Sequence[str | os.PathLike] | None = None,
    *,
    groups: Sequence[str] | None = None,
    drawers: Sequence[int] | None = None,
    **calibration,
):
    """Calibrate an existing bundle's open-set curve again, without its checkpoint, and rewrite its manifest.

    The images (see `calibration_data`) go through the bundle's own graphs, as the device embeds them: support
    images through the enrollment graph where the bundle has one. Only `open_set` and the manifest's digest
    change; the graphs and every other file stay byte for byte, so galleries enrolled with the bundle remain
    valid. calibration: keyword arguments of `calibrate_curve` (shots, way, episodes, seed, ...).
    Returns the reloaded (verified) bundle.
    """
    from metaedge import bundle as bundle_io

    bundle = bundle_io.load(bundle_dir)
    data, source = calibration_data(bundle.manifest, roots, groups, drawers)
    queries, support = embed_with_bundle(bundle, data)
    open_set = calibrate_curve(queries, data, bundle.metric, support_embeddings=support, source=source,
                               **calibration)  # fmt: skip
    return bundle_io.update_manifest(bundle.path, {"open_set": open_set})


def embed_with_bundle(bundle, data: LoadedDataset) -> tuple[np.ndarray, np.ndarray]:
    """float32 (num_images, D) twice: `data`'s images through a loaded bundle's query graph, then through its
    enrollment graph (the same array where it has none), on ONNX Runtime's CPU provider, as the device does."""
    from metaedge.ort import create_session

    target = bundle.manifest.get("target") or {}
    threads, batch = int(target.get("threads", 0)), int(target.get("max_batch", 64))
    session = create_session(bundle.onnx_path, ("CPUExecutionProvider",), threads)
    enroll = None
    if bundle.has_enroll_graph:  # support images through their own graph, as Runtime.enroll embeds them
        enroll = create_session(bundle.enroll_onnx_path, ("CPUExecutionProvider",), threads)
    return _embed(data, session, enroll, batch)


def _embed(data: LoadedDataset, session, enroll_session, max_batch: int) -> tuple[np.ndarray, np.ndarray]:
    from metaedge.ort import run_batched

    pixels = data.spec.normalize(data.pixels)
    queries = run_batched(session, pixels, max_batch)
    return queries, queries if enroll_session is None else run_batched(enroll_session, pixels, max_batch)


def calibrate_sessions(data: LoadedDataset, session, enroll_session, metric: str, max_batch: int, source: dict,
                       **calibration) -> dict:  # fmt: skip
    """`calibrate_curve` on `data` embedded by ONNX Runtime sessions: `session` the query graph, `enroll_session`
    the enrollment graph (None: the bundle embeds support images with the query graph)."""
    queries, support = _embed(data, session, enroll_session, max_batch)
    return calibrate_curve(queries, data, metric, support_embeddings=support, source=source, **calibration)


def summary(open_set: dict) -> str:
    """The curve as a few lines of text, for the CLI."""
    rows = [f"{e['shots']:>5}  {e['threshold']:>9.4f}  {100 * e['known_accept_rate']:>6.1f}%  "
            f"{100 * e['unknown_reject_rate']:>6.1f}%  {e['auroc']:.3f}"
            for e in open_set.get("curve", [])]  # fmt: skip
    return "\n".join(["shots  threshold  accept  reject  AUROC", *rows, f"data: {json.dumps(open_set.get('data'))}"])


__all__ = ["ACCEPT_RATE", "SHOTS", "CalibrationError", "auroc", "calibrate_curve", "calibrate_sessions",
           "calibration_data", "embed_with_bundle", "jackknife_rate", "measure", "parse_drawers", "people",
           "recalibrate_bundle", "summary", "threshold_for"]  # fmt: skip
