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
HEAD_INITS = ("prototypes", "zeros")
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


def check_float32(value: object, name: str) -> float:
    """A real number that is finite in float32, as a Python float."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise KernelInputError(f"{name} must be a finite float32 number, got {value!r}") from None
    # float32 range too: the kernels multiply in float, where 1e300 would already be inf.
    if not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
        raise KernelInputError(f"{name} must be a finite float32 number, got {number!r}")
    return number


def check_scale(scale: object) -> float:
    return check_float32(scale, "scale")


def check_init(init: object) -> str:
    if init not in HEAD_INITS:
        raise KernelInputError(f"unknown init {init!r}; choose one of 'prototypes', 'zeros'")
    return init


def check_steps(steps: object) -> int:
    if isinstance(steps, bool):
        raise KernelInputError(f"steps must be an integer, got {steps!r}")
    try:
        value = operator.index(steps)
    except TypeError:
        raise KernelInputError(f"steps must be an integer, got {steps!r}") from None
    if value < 0:
        raise KernelInputError(f"steps must be >= 0, got {value}")
    return value


def check_step_size_shapes(
    lr_weight_shape: tuple | None, lr_bias_shape: tuple | None, num_classes: int, d: int
) -> None:
    """lr_weight (C, D) and lr_bias (C,), each where given (None: the scalar lr)."""
    if lr_weight_shape is not None and tuple(lr_weight_shape) != (num_classes, d):
        raise KernelInputError(f"lr_weight must have shape (C, D) = {(num_classes, d)}, got {tuple(lr_weight_shape)}")
    if lr_bias_shape is not None and tuple(lr_bias_shape) != (num_classes,):
        raise KernelInputError(f"lr_bias must have shape (C,) = {(num_classes,)}, got {tuple(lr_bias_shape)}")


def as_step_sizes(lr_weight: object, lr_bias: object, num_classes: int, d: int) -> tuple:
    """Per-parameter step sizes -> (lr_weight (C, D), lr_bias (C,)) C-contiguous float32 arrays, or None each."""
    w = None if lr_weight is None else as_float_matrix(lr_weight, "lr_weight")
    b = None if lr_bias is None else as_float_matrix(lr_bias, "lr_bias")
    check_step_size_shapes(None if w is None else w.shape, None if b is None else b.shape, num_classes, d)
    for a, name in ((w, "lr_weight"), (b, "lr_bias")):
        if a is not None and not np.isfinite(a).all():
            raise KernelInputError(f"{name} must hold finite numbers")
    return w, b


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


def adapt_head(
    embeddings,
    labels,
    num_classes: int,
    steps: int = 50,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    init: str = "prototypes",
    lr_weight=None,
    lr_bias=None,
) -> tuple[np.ndarray, np.ndarray]:
    """A linear softmax head (logits = X @ W.T + b) fitted to a support set by full-batch gradient descent.

    embeddings: array of shape (N, D), real numbers. labels: integer array of shape (N,), values in
    [0, num_classes), every class present. init="prototypes": W0 = the L2-normalised class means (`prototypes`);
    "zeros": W0 = 0; b0 = 0 either way. Each of `steps` steps, with G = (softmax(X W^T + b) - onehot(labels)) / N:
        W -= lr_W * (G^T X + weight_decay * W),   b -= lr_b * G.sum(axis=0),
    lr_W = lr_weight (C, D) and lr_b = lr_bias (C,) where given (Meta-SGD), else the scalar lr. This is plain
    gradient descent on mean cross-entropy + 0.5 * weight_decay * ||W||^2.
    Returns (weight (C, D), bias (C,)), float32. Computed in float64, rounded once at the end.
    """
    init = check_init(init)
    steps = check_steps(steps)
    lr = check_float32(lr, "lr")
    weight_decay = check_float32(weight_decay, "weight_decay")
    emb = as_float_matrix(embeddings, "embeddings")
    lab = as_labels(labels)
    num_classes = check_prototypes_shapes(emb.shape, lab.shape, num_classes)
    lr_w, lr_b = as_step_sizes(lr_weight, lr_bias, num_classes, emb.shape[1])
    check_labels(lab, num_classes)

    x = emb.astype(np.float64)
    n, d = x.shape
    # The float32 prototypes, as the native kernels start from them.
    w = prototypes(emb, lab, num_classes).astype(np.float64) if init == "prototypes" else np.zeros((num_classes, d))
    b = np.zeros(num_classes)
    step_w = lr if lr_w is None else lr_w.astype(np.float64)
    step_b = lr if lr_b is None else lr_b.astype(np.float64)
    onehot = np.zeros((n, num_classes))
    onehot[np.arange(n), lab] = 1.0
    for _ in range(steps):
        z = x @ w.T + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / n
        w = w - step_w * (g.T @ x + weight_decay * w)
        b = b - step_b * g.sum(axis=0)
    return w.astype(np.float32), b.astype(np.float32)
