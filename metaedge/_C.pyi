"""Type stubs for metaedge._C, the compiled kernels (csrc/extension.cpp). Call them through metaedge.kernels."""

import numpy as np
import numpy.typing as npt

def prototypes_cpu(
    embeddings: npt.ArrayLike, labels: npt.ArrayLike, num_classes: int, normalize: bool
) -> npt.NDArray[np.float32]:
    """embeddings (N, D) float32, labels (N,) int64 in [0, num_classes) -> (num_classes, D) float32 class means,
    L2-normalised if `normalize`. Raises ValueError on bad shapes, an out-of-range label or an empty class."""

def logits_cpu(queries: npt.ArrayLike, prototypes: npt.ArrayLike, metric: str, scale: float) -> npt.NDArray[np.float32]:
    """queries (M, D), prototypes (C, D) float32 -> (M, C) float32: -scale * ||q - p||^2 (metric="sqeuclidean")
    or scale * cos(q, p) (metric="cosine"). Raises ValueError on bad shapes, metric or scale."""

def adapt_head_cpu(
    embeddings: npt.ArrayLike,
    labels: npt.ArrayLike,
    num_classes: int,
    steps: int,
    lr: float,
    weight_decay: float,
    init: str,
    lr_weight: npt.ArrayLike | None = None,
    lr_bias: npt.ArrayLike | None = None,
    form: str = "auto",
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """embeddings (N, D) float32, labels (N,) int64 in [0, num_classes), optional lr_weight (C, D) and lr_bias (C,)
    float32 -> (weight (C, D), bias (C,)) float32: `steps` steps of full-batch gradient descent on a linear softmax
    head, from init="prototypes" (normalised class means) or "zeros". form="primal" updates W itself, "dual" carries
    W = a * W0 + A @ X (only without lr_weight), "auto" picks the one with fewer multiply-adds; the iterates are the
    same up to float rounding. Raises ValueError on bad shapes, scalars, step sizes, labels or names."""

def cuda_built() -> bool:
    """True if this build has the CUDA kernels (the functions below exist only then)."""

# ---- present only when cuda_built() is True ---------------------------------------------------------------

def cuda_device_count() -> int:
    """Number of CUDA devices visible to this process; 0 without a GPU or a driver."""

def prototypes_cuda(
    embeddings: int, labels: int, out: int, n: int, d: int, num_classes: int, normalize: bool, stream: int
) -> None:
    """Device pointers: embeddings (n, d) float32, labels (n,) int64, out (num_classes, d) float32, contiguous,
    on one device; `stream` a cudaStream_t. Waits for the stream once to read back the label checks, and raises
    ValueError on an out-of-range label or an empty class."""

def logits_cuda(
    queries: int, prototypes: int, out: int, m: int, c: int, d: int, metric: str, scale: float, stream: int
) -> None:
    """Device pointers: queries (m, d), prototypes (c, d), out (m, c), float32, contiguous, on one device;
    `stream` a cudaStream_t. Asynchronous: returns once the kernel is enqueued."""

def adapt_head_cuda(
    embeddings: int,
    labels: int,
    lr_weight: int,
    lr_bias: int,
    weight: int,
    bias: int,
    n: int,
    d: int,
    num_classes: int,
    steps: int,
    lr: float,
    weight_decay: float,
    init: str,
    stream: int,
) -> None:
    """Device pointers: embeddings (n, d) float32, labels (n,) int64, lr_weight (C, d) and lr_bias (C,) float32 or 0
    (the scalar lr), weight (C, d) and bias (C,) float32 outputs; contiguous, on one device; `stream` a
    cudaStream_t. Enqueues the whole loop, then waits for the stream once to read back the checks, and raises
    ValueError on an out-of-range label, an empty class or a non-finite step size."""
