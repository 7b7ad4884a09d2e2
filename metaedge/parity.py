"""Parity of an exported backbone with PyTorch on real images: embeddings and few-shot predictions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from metaedge.data import EpisodeSampler, LoadedDataset
from metaedge.errors import MetaedgeError
from metaedge.evaluate import embed_all
from metaedge.methods import FewShotMethod

# fp32 must match closely; reduced precisions are judged by direction (cosine) and by the decisions they produce,
# since their element-wise error is expected and harmless.
TOLERANCES = {
    "fp32": {"max_abs_diff": 1e-3, "min_cosine": 0.99999, "min_agreement": 0.995},
    "fp16": {"max_abs_diff": None, "min_cosine": 0.999, "min_agreement": 0.98},
    "int8": {"max_abs_diff": None, "min_cosine": 0.98, "min_agreement": 0.95},
}


# How a failed agreement criterion's message begins (quantize.diagnosis and the exporter's refusal look for it).
AGREEMENT_FAILURE = "few-shot prediction agreement"


class ParityError(MetaedgeError):
    """The exported graph's output cannot be compared with PyTorch's at all (another shape)."""


@dataclass
class ParityReport:
    backend: str
    precision: str
    images: int
    max_abs_diff: float
    min_cosine: float
    episodes: int
    way: int
    shot: int
    query: int
    agreement: float
    tolerances: dict
    passed: bool
    failures: list[str]
    # Each side's own accuracy on the agreement episodes, reported beside the gate, not judged by it: a network
    # whose answers are near chance can disagree with its exported graph on many queries (decisions that hang on
    # small differences) while both are equally accurate, which agreement alone does not show.
    reference_accuracy: float
    candidate_accuracy: float

    def to_dict(self) -> dict:
        return asdict(self)


def check_parity(
    method: FewShotMethod,
    candidate: np.ndarray,
    data: LoadedDataset,
    *,
    backend: str,
    precision: str = "fp32",
    episodes: int = 200,
    way: int = 5,
    shot: int = 1,
    query: int = 5,
    seed: int = 0,
    support: bool = False,
) -> ParityReport:
    """Compare `candidate`, float32 (num_images, D) embeddings of `data` from the exported backbone, with PyTorch.

    support: the candidate is the enrollment graph, so PyTorch embeds through the enroll views too.
    Raises ParityError where the candidate's shape is not PyTorch's; every other difference is a failed report.
    """
    reference = embed_all(method, data, support=support)

    def decide(support_z, support_labels, query_z, way):
        return method.classify_embeddings(support_z, support_labels, query_z, way).argmax(1)

    return compare_embeddings(reference, candidate, data, decide, backend=backend, precision=precision,
                              episodes=episodes, way=way, shot=shot, query=query, seed=seed)  # fmt: skip


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row i of a (N, D) against row i of b (N, D) -> cosine similarities (N,).

    A row that is zero in both is the same answer twice: 1, not 0 (a ReLU network can leave every unit of an
    embedding dead for an image: a trained ResNet-18 at 32x32 does it to some CIFAR photos). Zero against non-zero
    stays 0."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosines = (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
    return np.where(~a.any(axis=1) & ~b.any(axis=1), 1.0, cosines)


def compare_embeddings(
    reference: np.ndarray,
    candidate: np.ndarray,
    data: LoadedDataset,
    decide: Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray],
    *,
    backend: str,
    precision: str = "fp32",
    episodes: int = 200,
    way: int = 5,
    shot: int = 1,
    query: int = 5,
    seed: int = 0,
    reference_name: str = "PyTorch",
) -> ParityReport:
    """The parity gate: `candidate` against `reference`, float32 (num_images, D) embeddings of `data`'s images,
    by element, by direction, and by the few-shot decisions `decide(support (S, D), support_labels (S,),
    queries (Q, D), way) -> predicted labels (Q,)` takes from each over seeded episodes.
    """
    if candidate.shape != reference.shape:  # no tolerance or --force can make such a graph usable
        raise ParityError(f"{backend}: the exported graph gives embeddings of shape {candidate.shape}, "
                          f"{reference_name} {reference.shape}")  # fmt: skip
    finite = np.isfinite(candidate).all(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite rows are reported below, not warned about
        diff = float(np.abs(reference - candidate).max())
        cosine = float(row_cosines(reference, candidate).min())
    way = min(way, data.num_classes)
    sampler = EpisodeSampler(data.labels, data.class_groups, way, shot, query, seed=seed)
    agree, right_a, right_b = [], [], []
    for ep in sampler.episodes(episodes):
        a = decide(reference[ep.support], ep.support_labels, reference[ep.query], way)
        b = decide(candidate[ep.support], ep.support_labels, candidate[ep.query], way)
        agree.append(float((a == b).mean()))
        right_a.append(float((a == ep.query_labels).mean()))
        right_b.append(float((b == ep.query_labels).mean()))
    agreement = float(np.mean(agree))
    tol = TOLERANCES[precision]
    failures = []
    if not finite.all():
        failures.append(f"{int((~finite).sum())} of {len(finite)} embeddings not finite (NaN or inf)")
    # Written `not value >= bound`: a NaN compares false either way, and must fail a criterion, never pass it.
    if tol["max_abs_diff"] is not None and not diff <= tol["max_abs_diff"]:
        failures.append(f"max abs difference {diff:.3g} > {tol['max_abs_diff']:.3g}")
    if not cosine >= tol["min_cosine"]:
        failures.append(f"min cosine similarity {cosine:.6f} < {tol['min_cosine']}")
    if not agreement >= tol["min_agreement"]:
        failures.append(f"{AGREEMENT_FAILURE} {agreement:.4f} < {tol['min_agreement']}")
    return ParityReport(
        backend=backend, precision=precision, images=len(reference), max_abs_diff=diff, min_cosine=cosine,
        episodes=episodes, way=way, shot=shot, query=query, agreement=agreement, tolerances=tol,
        passed=not failures, failures=failures, reference_accuracy=float(np.mean(right_a)),
        candidate_accuracy=float(np.mean(right_b)),
    )  # fmt: skip
