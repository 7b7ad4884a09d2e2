"""Pure numpy reference of the native kernels: the definition they are tested against, and the fallback.

It also owns the argument checks and their messages, which `metaedge.kernels` reuses on every path, so that
each backend rejects the same inputs with the same `KernelInputError`. The label checks are repeated in C++
(and on the GPU), so the native code never trusts a label it has not checked itself.
"""

from __future__ import annotations

import math
import operator
import sys

import numpy as np

from metaedge.errors import KernelInputError

METRICS = ("sqeuclidean", "cosine")
NORM_EPS = 1e-12  # torch.nn.functional.normalize's default
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64_MAX = int(np.iinfo(np.int64).max)


# ---- argument checks shared by every backend --------------------------------------------------------------


def to_numpy(x: object, name: str) -> np.ndarray:
    """Host view of an array-like (numpy, nested lists, a CPU or CUDA torch tensor), without copying if possible."""
    torch = sys.modules.get("torch")  # never imported here: if it is not loaded, x is no tensor
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise KernelInputError(f"{name} is not an array: {exc}") from None


def as_float_matrix(x: object, name: str) -> np.ndarray:
    """Any real-valued array-like -> C-contiguous float32 (a no-op for such an array already). Shape unchecked."""
    a = to_numpy(x, name)
    if a.dtype.kind not in "fiu":
        raise KernelInputError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def as_labels(x: object) -> np.ndarray:
    """Integer array-like -> C-contiguous int64. Shape and range unchecked."""
    a = to_numpy(x, "labels")
    if a.dtype.kind not in "iu":
        raise KernelInputError(f"labels must be integers, got dtype {a.dtype}")
    if a.dtype == np.uint64 and a.size and int(a.max()) > _INT64_MAX:  # would wrap to a negative int64
        i = int(np.argmax(a.reshape(-1) > _INT64_MAX))
        raise KernelInputError(f"labels[{i}] = {int(a.reshape(-1)[i])} does not fit in int64")
    return np.ascontiguousarray(a, dtype=np.int64)


def check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool):
        raise KernelInputError(f"num_classes must be an integer, got {num_classes!r}")
    try:
        value = operator.index(num_classes)
    except TypeError:
        raise KernelInputError(f"num_classes must be an integer, got {num_classes!r}") from None
    if value < 1:
        raise KernelInputError(f"num_classes must be >= 1, got {value}")
    return value


def check_prototypes_shapes(embeddings_shape: tuple, labels_shape: tuple, num_classes: object) -> int:
    """embeddings (N, D) non-empty, labels (N,), num_classes >= 1; returns num_classes as an int."""
    embeddings_shape, labels_shape = tuple(embeddings_shape), tuple(labels_shape)
    if len(embeddings_shape) != 2:
        raise KernelInputError(f"embeddings must be 2-D (N, D), got shape {embeddings_shape}")
    if len(labels_shape) != 1:
        raise KernelInputError(f"labels must be 1-D (N,), got shape {labels_shape}")
    if labels_shape[0] != embeddings_shape[0]:
        raise KernelInputError(f"embeddings has {embeddings_shape[0]} rows but labels has {labels_shape[0]} entries")
    num_classes = check_num_classes(num_classes)
    if 0 in embeddings_shape:
        raise KernelInputError(f"embeddings is empty: shape {embeddings_shape}")
    return num_classes


def check_metric(metric: object) -> str:
    if metric not in METRICS:
        raise KernelInputError(f"unknown metric {metric!r}; choose one of 'sqeuclidean', 'cosine'")
    return metric


def check_scale(scale: object) -> float:
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise KernelInputError(f"scale must be a finite float32 number, got {scale!r}") from None
    # float32 range too: the kernels multiply in float, where 1e300 would already be inf.
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise KernelInputError(f"scale must be a finite float32 number, got {value!r}")
    return value


def check_logits_shapes(queries_shape: tuple, prototypes_shape: tuple) -> None:
    """queries (M, D), prototypes (C, D) with C, D >= 1; M = 0 is allowed and gives a (0, C) result."""
    queries_shape, prototypes_shape = tuple(queries_shape), tuple(prototypes_shape)
    if len(queries_shape) != 2:
        raise KernelInputError(f"queries must be 2-D (M, D), got shape {queries_shape}")
    if len(prototypes_shape) != 2:
        raise KernelInputError(f"prototypes must be 2-D (C, D), got shape {prototypes_shape}")
    if queries_shape[1] != prototypes_shape[1]:
        raise KernelInputError(f"queries has D={queries_shape[1]} features but prototypes has D={prototypes_shape[1]}")
    if 0 in prototypes_shape:
        raise KernelInputError(f"prototypes is empty: shape {prototypes_shape}")


def check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """labels (N,) int64 -> counts (num_classes,). Raises on the first bad label, then on the first empty class."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise KernelInputError(f"labels[{i}] = {int(labels[i])} is out of range for num_classes={num_classes}")
    counts = np.bincount(labels, minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise KernelInputError(f"class {int(empty[0])} has no samples")
    return counts


# ---- the kernels --------------------------------------------------------------------------------------------


def prototypes(embeddings, labels, num_classes: int, normalize: bool = True) -> np.ndarray:
    """Mean embedding of each class, then (if `normalize`) divided by max(its L2 norm, 1e-12).

    embeddings: array of shape (N, D), real numbers.
    labels: integer array of shape (N,), values in [0, num_classes), every class present.
    Returns float32 array of shape (num_classes, D). Computed in float64, rounded once at the end.
    """
    emb = as_float_matrix(embeddings, "embeddings")
    lab = as_labels(labels)
    num_classes = check_prototypes_shapes(emb.shape, lab.shape, num_classes)
    counts = check_labels(lab, num_classes)

    order = np.argsort(lab, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    means = np.add.reduceat(emb[order].astype(np.float64), starts, axis=0) / counts[:, None]
    if normalize:
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), NORM_EPS)
    return means.astype(np.float32)


def logits(queries, prototypes, metric: str = "cosine", scale: float = 1.0) -> np.ndarray:
    """Score of every query against every prototype.

    queries: array of shape (M, D); prototypes: array of shape (C, D).
    metric="sqeuclidean": -scale * ||q - p||^2.
    metric="cosine": scale * <q / max(||q||, 1e-12), p / max(||p||, 1e-12)>.
    Returns float32 array of shape (M, C). Computed in float64, rounded once at the end.
    """
    metric = check_metric(metric)
    scale = check_scale(scale)
    q = as_float_matrix(queries, "queries").astype(np.float64)
    p = as_float_matrix(prototypes, "prototypes").astype(np.float64)
    check_logits_shapes(q.shape, p.shape)

    if metric == "cosine":
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), NORM_EPS)
        p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), NORM_EPS)
        return (scale * (q @ p.T)).astype(np.float32)
    # Direct differences, as the native kernels compute them; in row chunks so that the (rows, C, D)
    # intermediate stays near 32 MB whatever M is.
    out = np.empty((q.shape[0], p.shape[0]), dtype=np.float64)
    rows = max(1, (1 << 22) // (p.shape[0] * p.shape[1]))
    for i in range(0, q.shape[0], rows):
        out[i : i + rows] = ((q[i : i + rows, None, :] - p[None, :, :]) ** 2).sum(axis=2)
    return (-scale * out).astype(np.float32)
