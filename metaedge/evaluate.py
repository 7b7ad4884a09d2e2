"""Episodic evaluation: mean accuracy and 95% confidence interval over many seeded episodes."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from metaedge import checkpoint as ckpt
from metaedge import kernels
from metaedge.data import EpisodeSampler, LoadedDataset, open_dataset
from metaedge.errors import DataError
from metaedge.methods import FewShotMethod

# Evaluation episodes use seeds far from training's, so the two never draw the same episode stream.
EVAL_SEED_OFFSET = 1_000_003


@dataclass
class EvalResult:
    accuracy: float
    ci95: float
    episodes: int
    way: int
    shot: int
    query: int
    within_group: bool
    disjoint_drawers: bool
    groups: list[str]
    seed: int
    kernel_backend: str

    def to_dict(self) -> dict:
        return asdict(self)


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95% confidence interval (1.96 standard errors)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(len(values)))


def to_tensor(pixels: np.ndarray, spec, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 pixels (N, C, S, S) -> normalised float32 tensor of the same shape on `device`."""
    return torch.from_numpy(spec.normalize(pixels)).to(device)


@torch.no_grad()
def embed_all(
    method: FewShotMethod, data: LoadedDataset, device: str = "cpu", batch: int = 1024, *, support: bool = False
) -> np.ndarray:
    """Every image of `data` through the backbone in eval mode -> float32 (num_images, D).

    support: embed them as support (enrollment) images, through the method's enroll views where it has them.
    """
    method.eval()  # batch norm must use its running statistics: each query is classified on its own
    embed = method.embed_support if support else method.embed
    out = []
    for start in range(0, len(data.pixels), batch):
        x = to_tensor(data.pixels[start : start + batch], data.spec, device)
        out.append(embed(x).float().cpu().numpy())
    return np.concatenate(out)


def evaluate(method: FewShotMethod, data: LoadedDataset, *, device: str = "cpu", **protocol) -> EvalResult:
    """Accuracy of `method` on seeded episodes drawn from `data` (protocol: see `evaluate_embeddings`).

    Methods whose backbone is fixed after training embed every image once; methods that adapt the backbone
    per task (MAML) run their inner loop on each episode's support images.
    """
    if method.embeds_independently:
        queries = embed_all(method, data, device)
        support = embed_all(method, data, device, support=True) if method.enroll_views is not None else None
        return evaluate_embeddings(queries, method.classify_embeddings, data, support_embeddings=support, **protocol)
    images = to_tensor(data.pixels, data.spec, device)
    method.eval()  # batch norm uses running statistics: queries are classified one by one, inductively

    def classify(support_idx, support_labels, query_idx, way):
        with torch.enable_grad():  # the inner loop differentiates even at test time
            logits = method.episode_logits(images[support_idx], torch.from_numpy(support_labels).to(device),
                                           images[query_idx], way)  # fmt: skip
        return logits.detach().cpu().numpy()

    indices = np.arange(len(data.pixels))[:, None]  # "embeddings" that are image indices
    return evaluate_embeddings(indices, lambda s, sl, q, w: classify(s[:, 0], sl, q[:, 0], w), data, **protocol)


def eval_sampler(
    data: LoadedDataset, way: int, shot: int, query: int, *, within_group: bool = False,
    disjoint_drawers: bool = False, seed: int = 0,
) -> EpisodeSampler:  # fmt: skip
    """The seeded evaluation episodes of `data`, exactly as `metaedge evaluate` draws them (scripts that compare
    models on the same episodes draw them here too)."""
    return EpisodeSampler(
        data.labels, data.class_groups, way, shot, query,
        drawers=data.drawers, within_group=within_group, disjoint_drawers=disjoint_drawers,
        seed=seed + EVAL_SEED_OFFSET,
    )  # fmt: skip


def evaluate_embeddings(
    embeddings: np.ndarray,
    classify: Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray],
    data: LoadedDataset,
    *,
    way: int,
    shot: int,
    query: int,
    episodes: int,
    within_group: bool = False,
    disjoint_drawers: bool = False,
    seed: int = 0,
    on_episode: Callable[[int], None] | None = None,
    support_embeddings: np.ndarray | None = None,
) -> EvalResult:
    """Accuracy over `episodes` seeded episodes; same seed, same number.

    embeddings: float32 (num_images, D), one per image of `data`, computed once: each query is classified
    on its own (inductive), so an image's embedding does not depend on the episode it appears in.
    classify: (support (S, D), support_labels (S,), query (Q, D), way) -> logits (Q, way).
    support_embeddings: float32 (num_images, D) to take support images from instead (enrollment views).
    """
    if episodes < 1:
        raise DataError("need at least one evaluation episode")
    sampler = eval_sampler(data, way, shot, query, within_group=within_group, disjoint_drawers=disjoint_drawers,
                           seed=seed)  # fmt: skip
    support = embeddings if support_embeddings is None else support_embeddings
    accs = []
    for i, ep in enumerate(sampler.episodes(episodes)):
        logits = classify(support[ep.support], ep.support_labels, embeddings[ep.query], way)
        accs.append(float((logits.argmax(axis=1) == ep.query_labels).mean()))
        if on_episode is not None:
            on_episode(i)
    mean, ci = mean_ci95(accs)
    return EvalResult(
        accuracy=mean, ci95=ci, episodes=episodes, way=way, shot=shot, query=query,
        within_group=within_group, disjoint_drawers=disjoint_drawers,
        groups=sorted(set(data.class_groups)), seed=seed, kernel_backend=kernels.last_backend(),
    )  # fmt: skip


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    data: Sequence[str | os.PathLike] | None = None,
    *,
    groups: Sequence[str] | None = None,
    device: str = "cpu",
    views: int | None = None,
    enroll_views: int | None = None,
    **protocol,
) -> EvalResult:
    """Evaluate a run directory (its best checkpoint), a checkpoint file, or an exported bundle.

    By default the data are the roots it trained from, and the groups its held-out test groups,
    which training never saw. A bundle is evaluated as the device runs it: ONNX Runtime and the kernels.
    views: embed each image as the mean over this many test-time views (models/views.py); default: the
    checkpoint's own (1 unless set). A bundle's views are part of its ONNX graph, fixed at export.
    enroll_views: embed the support images through this many views instead (queries keep `views`).
    """
    from metaedge import bundle as bundle_io

    if (Path(checkpoint) / bundle_io.MANIFEST).is_file():
        if views is not None or enroll_views is not None:
            raise DataError(f"{checkpoint}: a bundle's test-time views are fixed at export; evaluate it without views")
        return _evaluate_bundle(bundle_io.load(checkpoint), data, groups, **protocol)
    loaded = ckpt.load(checkpoint, map_location=device)
    if views is not None:
        loaded.set_views(views)
    if enroll_views is not None:
        loaded.set_enroll_views(enroll_views)
    loaded.method.to(device)
    dataset = _held_out(loaded.meta, str(loaded.path), data, groups)
    return evaluate(loaded.method, dataset.load(loaded.preprocess), device=device, **protocol)


def _held_out(meta: dict, where: str, data, groups):
    if not data:
        data = meta["data"]["roots"]
    if groups is None:
        groups = (meta.get("split") or {}).get("test") or []
        if not groups:
            raise DataError(f"{where}: the model holds out no groups; name the groups to evaluate on")
    return open_dataset(list(data)).subset(groups)


def bundle_embeddings(bundle, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (N, C, S, S) images through a bundle as the device runs them -> (queries, support or None), float32
    (N, D): support embeddings from the enrollment graph, as Runtime.enroll computes them, where there is one.
    """
    from metaedge.ort import create_session, run_batched

    x = bundle.preprocess.normalize(pixels)
    queries = run_batched(create_session(bundle.onnx_path), x)
    return queries, run_batched(create_session(bundle.enroll_onnx_path), x) if bundle.has_enroll_graph else None


def _evaluate_bundle(bundle, data, groups, **protocol) -> EvalResult:
    from metaedge.methods.protonet import prototype_logits

    training = bundle.manifest.get("training") or {}
    dataset = _held_out(training, str(bundle.path), data, groups).load(bundle.preprocess)
    embeddings, support = bundle_embeddings(bundle, dataset.pixels)
    metric, scale = bundle.metric, bundle.scale
    classify = lambda s, sl, q, way: prototype_logits(s, sl, q, way, metric, scale)  # noqa: E731
    return evaluate_embeddings(embeddings, classify, dataset, support_embeddings=support, **protocol)
