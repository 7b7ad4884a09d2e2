"""Class prototypes, query logits and head adaptation: native C++ for host arrays, CUDA for GPU tensors, numpy
as the reference.

    protos = kernels.prototypes(embeddings, labels, num_classes=20)        # (C, D) from (N, D), (N,)
    scores = kernels.logits(queries, protos, metric="cosine", scale=10.0)  # (M, C)
    weight, bias = kernels.adapt_head(embeddings, labels, 20, steps=100)   # (C, D), (C,): a fitted linear head
    kernels.last_backend()                                                 # "native-cpu"

`backend="auto"` uses the compiled module `metaedge._C` where it was built and the numpy reference
(`metaedge._reference`) otherwise; "native" insists on the compiled one, "reference" on numpy. Every path
checks its inputs the same way and raises `KernelInputError` (a ValueError) with the same message.
Host inputs (numpy arrays, lists, CPU torch tensors) give numpy float32 results. Inputs on a CUDA device
(torch CUDA tensors, or anything with `__cuda_array_interface__`) are computed there, without a copy to the
host, and give a torch float32 tensor on that device. Nothing here records gradients.
"""

from __future__ import annotations

import sys
from typing import Any

from metaedge import _reference
from metaedge._reference import (
    as_float_matrix,
    as_labels,
    as_step_sizes,
    check_float32,
    check_init,
    check_logits_shapes,
    check_metric,
    check_prototypes_shapes,
    check_scale,
    check_step_size_shapes,
    check_steps,
    to_numpy,
)
from metaedge.errors import KernelInputError, MetaedgeError

try:
    from metaedge import _C
except ImportError as exc:  # a source checkout that was never built, or a build this machine cannot load
    _C = None
    _C_IMPORT_ERROR: ImportError | None = exc
else:
    _C_IMPORT_ERROR = None

BACKENDS = ("auto", "native", "reference")

_last_backend = "none"
_cuda_device_count: int | None = None


def native_available() -> bool:
    """True if the compiled module `metaedge._C` is built and importable here."""
    return _C is not None


def cuda_available() -> bool:
    """True if `metaedge._C` was built with the CUDA kernels and a CUDA device is present at run time."""
    global _cuda_device_count
    if _C is None or not _C.cuda_built():
        return False
    if _cuda_device_count is None:  # asked once: it initialises the driver, and the answer does not change
        _cuda_device_count = _C.cuda_device_count()
    return _cuda_device_count > 0


def last_backend() -> str:
    """Which implementation served the most recent call: "native-cpu", "native-cuda" or "reference".

    "none" before the first call.
    """
    return _last_backend


def prototypes(embeddings, labels, num_classes: int, normalize: bool = True, *, backend: str = "auto") -> Any:
    """Mean embedding of each class, then (if `normalize`) divided by max(its L2 norm, 1e-12).

    embeddings: array of shape (N, D), real numbers (converted to float32).
    labels: integer array of shape (N,), values in [0, num_classes), every class at least once.
    num_classes: C, the number of classes (the way of the episode).
    normalize: L2-normalise each prototype, as torch.nn.functional.normalize does (for cosine logits).
    backend: "auto", "native" or "reference" (see the module docstring).

    Returns an array of shape (C, D), float32: numpy for host inputs, a torch tensor on the same device for
    CUDA inputs.
    Raises KernelInputError for wrong shapes or dtypes, an out-of-range label or a class with no samples.
    """
    _check_backend(backend)
    if _on_cuda(embeddings):
        return _prototypes_cuda(embeddings, labels, num_classes, normalize, backend)
    emb = as_float_matrix(embeddings, "embeddings")
    lab = as_labels(labels)
    num_classes = check_prototypes_shapes(emb.shape, lab.shape, num_classes)
    if _use_native(backend):
        # Labels are checked by the C++ itself (the one pass it makes over them anyway).
        with _KernelErrors():
            out = _C.prototypes_cpu(emb, lab, num_classes, bool(normalize))
        return _served("native-cpu", out)
    return _served("reference", _reference.prototypes(emb, lab, num_classes, normalize))


def logits(queries, prototypes, metric: str = "cosine", scale: float = 1.0, *, backend: str = "auto") -> Any:
    """Score of every query against every prototype; the highest score is the predicted class.

    queries: array of shape (M, D), real numbers (converted to float32). M = 0 gives an empty (0, C) result.
    prototypes: array of shape (C, D), typically the output of `prototypes`.
    metric: "sqeuclidean" gives -scale * ||q - p||^2; "cosine" gives
        scale * <q / max(||q||, 1e-12), p / max(||p||, 1e-12)>.
    scale: a finite multiplier (the temperature of a cosine classifier).
    backend: "auto", "native" or "reference" (see the module docstring).

    Returns an array of shape (M, C), float32: numpy for host inputs, a torch tensor on the same device for
    CUDA inputs.
    Raises KernelInputError for wrong shapes or dtypes, mismatched D, an unknown metric or a non-finite scale.
    """
    _check_backend(backend)
    metric = check_metric(metric)
    scale = check_scale(scale)
    if _on_cuda(queries):
        return _logits_cuda(queries, prototypes, metric, scale, backend)
    q = as_float_matrix(queries, "queries")
    p = as_float_matrix(prototypes, "prototypes")
    check_logits_shapes(q.shape, p.shape)
    if _use_native(backend):
        with _KernelErrors():
            out = _C.logits_cpu(q, p, metric, scale)
        return _served("native-cpu", out)
    return _served("reference", _reference.logits(q, p, metric, scale))


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
    *,
    backend: str = "auto",
) -> tuple[Any, Any]:
    """Fit a linear softmax head (logits = X @ W.T + b) to a support set, the whole gradient-descent loop in one call.

    embeddings: array of shape (N, D), real numbers (converted to float32): the support embeddings X.
    labels: integer array of shape (N,), values in [0, num_classes), every class at least once.
    num_classes: C, the number of classes (the way of the episode).
    steps: number of full-batch gradient steps, >= 0 (0 returns the initialisation).
    lr: the step size of W and b (where lr_weight / lr_bias do not replace it); finite.
    weight_decay: L2 penalty 0.5 * weight_decay * ||W||^2 on the weight (not the bias); finite.
    init: "prototypes" starts from W0 = the L2-normalised class means (weight imprinting, `prototypes`), "zeros"
        from W0 = 0; b0 = 0 either way.
    lr_weight: optional array of shape (C, D), a step size per weight entry (Meta-SGD); finite.
    lr_bias: optional array of shape (C,), a step size per bias entry; finite.
    backend: "auto", "native" or "reference" (see the module docstring).

    Each step is one step of plain gradient descent on mean cross-entropy + 0.5 * weight_decay * ||W||^2: with
    P = softmax(X W^T + b) (N, C) and G = (P - onehot(labels)) / N,
        W -= lr_W * (G^T X + weight_decay * W),   b -= lr_b * G.sum(axis=0).
    With init="zeros", weight_decay=0 and no per-parameter step sizes it is torch.optim.SGD(lr) on
    F.cross_entropy(X @ W.T + b, labels), step for step.

    Returns (weight, bias) of shapes (C, D) and (C,), float32: numpy arrays for host inputs, torch tensors on the
    same device for CUDA inputs.
    Raises KernelInputError for wrong shapes or dtypes, an out-of-range label, a class with no samples, negative
    steps, a non-finite lr, weight_decay or step size, or an unknown init.
    """
    _check_backend(backend)
    init = check_init(init)
    steps = check_steps(steps)
    lr = check_float32(lr, "lr")
    weight_decay = check_float32(weight_decay, "weight_decay")
    if _on_cuda(embeddings):
        return _adapt_head_cuda(embeddings, labels, num_classes, steps, lr, weight_decay, init, lr_weight, lr_bias,
                                backend)  # fmt: skip
    emb = as_float_matrix(embeddings, "embeddings")
    lab = as_labels(labels)
    num_classes = check_prototypes_shapes(emb.shape, lab.shape, num_classes)
    lr_w, lr_b = as_step_sizes(lr_weight, lr_bias, num_classes, emb.shape[1])
    if _use_native(backend):
        # Labels are checked by the C++ itself, before it starts.
        with _KernelErrors():
            out = _C.adapt_head_cpu(emb, lab, num_classes, steps, lr, weight_decay, init, lr_w, lr_b)
        return _served("native-cpu", out)
    out = _reference.adapt_head(emb, lab, num_classes, steps, lr, weight_decay, init, lr_w, lr_b)
    return _served("reference", out)


# ---- dispatch -----------------------------------------------------------------------------------------------


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise KernelInputError(f"unknown backend {backend!r}; choose one of 'auto', 'native', 'reference'")


def _use_native(backend: str) -> bool:
    if backend == "native" and _C is None:
        raise MetaedgeError(
            f"backend='native' but the compiled module metaedge._C is not available ({_C_IMPORT_ERROR}); "
            "install metaedge with `pip install .` to build it"
        )
    return backend != "reference" and _C is not None


def _use_native_cuda(backend: str) -> bool:
    if backend == "native" and not cuda_available():
        built = _C is not None and _C.cuda_built()
        raise MetaedgeError(
            "backend='native' was asked for CUDA inputs, but "
            + ("no CUDA device is visible" if built else "metaedge._C was built without the CUDA kernels")
        )
    return backend != "reference" and cuda_available()


def _served(backend: str, out: Any) -> Any:
    global _last_backend
    _last_backend = backend
    return out


class _KernelErrors:
    """The extension raises ValueError (from std::invalid_argument); metaedge's callers catch KernelInputError.
    A class, not a @contextmanager generator: it wraps the logits call of every classify, where a generator's
    set-up cost four times as much (2.1 against 0.5 us)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is not None and issubclass(kind, ValueError):
            raise KernelInputError(str(exc)) from None
        return False


# ---- CUDA inputs --------------------------------------------------------------------------------------------


def _on_cuda(x: object) -> bool:
    """True for a torch CUDA tensor or any object exposing `__cuda_array_interface__`."""
    torch = sys.modules.get("torch")  # no import: if torch is not loaded, x cannot be a tensor
    if torch is not None and isinstance(x, torch.Tensor):
        return x.is_cuda
    # Looked up on the type: reading the property itself can raise (e.g. for a tensor that requires grad).
    return hasattr(type(x), "__cuda_array_interface__")


def _device_tensor(torch: Any, x: object, name: str, device: Any = None) -> Any:
    """x as a torch tensor on `device` (default: where it already is), detached."""
    try:
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise KernelInputError(f"{name} is not an array: {exc}") from None
    return (t if device is None else t.to(device)).detach()


def _stream(torch: Any, device: Any) -> int:
    # The caller's current stream, so the kernels are ordered after the ops that produced the inputs.
    return torch.cuda.current_stream(device).cuda_stream


def _device_support_set(torch, embeddings, labels, num_classes):
    """Embeddings (real) and labels (integer) as tensors on one CUDA device, shapes checked."""
    emb = _device_tensor(torch, embeddings, "embeddings")
    if emb.is_complex() or emb.dtype == torch.bool:
        raise KernelInputError(f"embeddings must hold real numbers, got dtype {emb.dtype}")
    lab = _device_tensor(torch, labels, "labels", emb.device)
    if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
        raise KernelInputError(f"labels must be integers, got dtype {lab.dtype}")
    return emb, lab, check_prototypes_shapes(emb.shape, lab.shape, num_classes)


def _prototypes_cuda(embeddings, labels, num_classes, normalize: bool, backend: str) -> Any:
    import torch

    emb, lab, num_classes = _device_support_set(torch, embeddings, labels, num_classes)
    if not _use_native_cuda(backend):
        # No CUDA kernels here (or the reference asked for): compute on the host, hand back on the device.
        device = emb.device
        emb, lab = to_numpy(emb, "embeddings"), to_numpy(lab, "labels")
        host = prototypes(emb, lab, num_classes, normalize, backend=backend)
        return torch.from_numpy(host).to(device)

    emb = emb.to(torch.float32).contiguous()
    lab = lab.to(torch.int64).contiguous()
    n, d = emb.shape
    out = torch.empty((num_classes, d), dtype=torch.float32, device=emb.device)
    # The launcher reads back the device-side label checks and raises here, before anyone sees `out`. (It also
    # switches to the buffers' device itself; torch.cuda.device keeps torch's current device in step with it.)
    with _KernelErrors(), torch.cuda.device(emb.device):
        stream = _stream(torch, emb.device)
        _C.prototypes_cuda(emb.data_ptr(), lab.data_ptr(), out.data_ptr(), n, d, num_classes, bool(normalize), stream)
    return _served("native-cuda", out)


def _logits_cuda(queries, prototypes, metric: str, scale: float, backend: str) -> Any:
    import torch

    q = _device_tensor(torch, queries, "queries")
    p = _device_tensor(torch, prototypes, "prototypes", q.device)
    for name, t in (("queries", q), ("prototypes", p)):
        if t.is_complex() or t.dtype == torch.bool:
            raise KernelInputError(f"{name} must hold real numbers, got dtype {t.dtype}")
    check_logits_shapes(q.shape, p.shape)
    if not _use_native_cuda(backend):
        host = logits(to_numpy(q, "queries"), to_numpy(p, "prototypes"), metric, scale, backend=backend)
        return torch.from_numpy(host).to(q.device)

    q = q.to(torch.float32).contiguous()
    p = p.to(torch.float32).contiguous()
    (m, d), c = q.shape, p.shape[0]
    out = torch.empty((m, c), dtype=torch.float32, device=q.device)
    with _KernelErrors(), torch.cuda.device(q.device):
        _C.logits_cuda(q.data_ptr(), p.data_ptr(), out.data_ptr(), m, c, d, metric, scale, _stream(torch, q.device))
    return _served("native-cuda", out)


def _adapt_head_cuda(embeddings, labels, num_classes, steps: int, lr: float, weight_decay: float, init: str,
                     lr_weight, lr_bias, backend: str) -> tuple[Any, Any]:  # fmt: skip
    import torch

    emb, lab, num_classes = _device_support_set(torch, embeddings, labels, num_classes)
    step_sizes = []
    for x, name in ((lr_weight, "lr_weight"), (lr_bias, "lr_bias")):
        t = None if x is None else _device_tensor(torch, x, name, emb.device)
        if t is not None and (t.is_complex() or t.dtype == torch.bool):
            raise KernelInputError(f"{name} must hold real numbers, got dtype {t.dtype}")
        step_sizes.append(t)
    lr_w, lr_b = step_sizes
    check_step_size_shapes(None if lr_w is None else lr_w.shape, None if lr_b is None else lr_b.shape,
                           num_classes, emb.shape[1])  # fmt: skip
    if not _use_native_cuda(backend):
        # No CUDA kernels here (or the reference asked for): compute on the host, hand back on the device.
        device = emb.device
        host = [None if t is None else to_numpy(t, name) for t, name in ((lr_w, "lr_weight"), (lr_b, "lr_bias"))]
        w, b = adapt_head(to_numpy(emb, "embeddings"), to_numpy(lab, "labels"), num_classes, steps, lr, weight_decay,
                          init, *host, backend=backend)  # fmt: skip
        return torch.from_numpy(w).to(device), torch.from_numpy(b).to(device)

    emb = emb.to(torch.float32).contiguous()
    lab = lab.to(torch.int64).contiguous()
    lr_w = None if lr_w is None else lr_w.to(torch.float32).contiguous()
    lr_b = None if lr_b is None else lr_b.to(torch.float32).contiguous()
    n, d = emb.shape
    weight = torch.empty((num_classes, d), dtype=torch.float32, device=emb.device)
    bias = torch.empty((num_classes,), dtype=torch.float32, device=emb.device)
    # The launcher checks labels and step sizes on the device and reads the verdict back once, raising here.
    with _KernelErrors(), torch.cuda.device(emb.device):
        _C.adapt_head_cuda(
            emb.data_ptr(),
            lab.data_ptr(),
            0 if lr_w is None else lr_w.data_ptr(),
            0 if lr_b is None else lr_b.data_ptr(),
            weight.data_ptr(),
            bias.data_ptr(),
            n,
            d,
            num_classes,
            steps,
            lr,
            weight_decay,
            init,
            _stream(torch, emb.device),
        )
    return _served("native-cuda", (weight, bias))
