"""metaedge.kernels.adapt_head: against torch.optim.SGD and torch autograd, native against reference, bad inputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metaedge import _reference, kernels
from metaedge.errors import KernelInputError

# Both backends run everywhere: tests/conftest.py refuses a metaedge without its native kernels.
BACKENDS = ["native", "reference"]
requires_cuda = pytest.mark.skipif(not kernels.cuda_available(), reason="no CUDA build of metaedge._C or no GPU")

# Not multiples of any SIMD width or register tile (1, 7, 65, 130) next to one that is (64).
DIMS = [1, 7, 64, 65, 130]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The torch definitions below are tiny ops: on one thread, a busy machine cannot stall them in OpenMP barriers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def support_set(seed: int, n: int, c: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """embeddings (n, d) float32 around one centre per class, labels (n,) int64 with every class present."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.concatenate([np.arange(c), rng.integers(0, c, n - c)]))
    centres = rng.standard_normal((c, d)).astype(np.float32)
    return centres[labels] + rng.standard_normal((n, d)).astype(np.float32), labels


def torch_descent(x, y, w0, b0, steps, lr_w, lr_b, weight_decay=0.0, snapshots=()):
    """The definition, with autograd: steps of W -= lr_W * dL/dW on mean cross-entropy + 0.5 * wd * ||W||^2."""
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    x, y = torch.from_numpy(x).double(), torch.from_numpy(y)
    lr_w, lr_b = (torch.as_tensor(v, dtype=torch.float64) for v in (lr_w, lr_b))
    taken = {}
    for step in range(1, steps + 1):
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * weight_decay * (w * w).sum()
        grad_w, grad_b = torch.autograd.grad(loss, (w, b))
        with torch.no_grad():
            w -= lr_w * grad_w
            b -= lr_b * grad_b
        if step in snapshots:
            taken[step] = (w.detach().numpy().copy(), b.detach().numpy().copy())
    return taken if snapshots else (w.detach().numpy(), b.detach().numpy())


# ---- the definition: torch.optim.SGD and autograd ----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,c,d,lr", [(25, 5, 64, 0.5), (37, 4, 65, 1.0)])
def test_matches_torch_sgd_step_for_step(backend, n, c, d, lr):
    """init="zeros", no weight decay, one scalar lr: exactly torch.optim.SGD on F.cross_entropy, in float32."""
    x, y = support_set(n + d, n, c, d)
    w = torch.zeros(c, d, requires_grad=True)
    b = torch.zeros(c, requires_grad=True)
    sgd = torch.optim.SGD([w, b], lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    done = 0
    for steps in (1, 5, 50):
        for _ in range(steps - done):
            sgd.zero_grad()
            F.cross_entropy(xt @ w.T + b, yt).backward()
            sgd.step()
        done = steps
        got_w, got_b = kernels.adapt_head(x, y, c, steps=steps, lr=lr, init="zeros", backend=backend)
        np.testing.assert_allclose(got_w, w.detach().numpy(), rtol=0, atol=1e-4, err_msg=f"W after {steps} steps")
        np.testing.assert_allclose(got_b, b.detach().numpy(), rtol=0, atol=1e-4, err_msg=f"b after {steps} steps")
    assert np.abs(got_w).max() > 0.1  # the head did move


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("given", ["both", "weight", "bias"])
def test_meta_sgd_step_sizes_match_autograd(backend, given):
    """Per-parameter step sizes (Meta-SGD), weight decay and imprinted init against the autograd definition."""
    n, c, d = 30, 6, 33
    x, y = support_set(3, n, c, d)
    rng = np.random.default_rng(4)
    lr_weight = rng.uniform(0.05, 1.5, (c, d)).astype(np.float32) if given != "bias" else None
    lr_bias = rng.uniform(0.05, 1.5, c).astype(np.float32) if given != "weight" else None
    w0 = _reference.prototypes(x, y, c)
    expected = torch_descent(
        x, y, w0, np.zeros(c), 20, 0.3 if lr_weight is None else lr_weight, 0.3 if lr_bias is None else lr_bias, 0.05
    )
    got = kernels.adapt_head(x, y, c, 20, 0.3, 0.05, "prototypes", lr_weight, lr_bias, backend=backend)
    for g, e in zip(got, expected):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, e, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_steps_return_the_initialisation(backend):
    x, y = support_set(5, 12, 3, 10)
    w, b = kernels.adapt_head(x, y, 3, steps=0, backend=backend)
    np.testing.assert_array_equal(w, kernels.prototypes(x, y, 3, backend=backend))
    np.testing.assert_array_equal(b, np.zeros(3, np.float32))
    w, b = kernels.adapt_head(x, y, 3, steps=0, init="zeros", backend=backend)
    assert not w.any() and not b.any() and w.shape == (3, 10) and b.shape == (3,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_single_class_never_moves(backend):
    # softmax over one class is 1 = onehot: no gradient, so W stays W0 and b stays 0 (up to the weight decay).
    x, _ = support_set(6, 7, 1, 5)
    w, b = kernels.adapt_head(x, np.zeros(7, np.int64), 1, steps=40, lr=2.0, backend=backend)
    np.testing.assert_allclose(w, kernels.prototypes(x, np.zeros(7, np.int64), 1), atol=1e-7)
    np.testing.assert_array_equal(b, [0.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_fitted_head_separates_its_support_set(backend):
    x, y = support_set(7, 50, 10, 16)
    w, b = kernels.adapt_head(x, y, 10, steps=100, lr=1.0, init="zeros", backend=backend)
    assert ((x @ w.T + b).argmax(axis=1) == y).mean() == 1.0


# ---- native against the reference -------------------------------------------------------------------------


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("meta_sgd", [False, True])
@pytest.mark.parametrize("init,weight_decay", [("prototypes", 0.0), ("prototypes", 0.1), ("zeros", 0.01)])
@pytest.mark.parametrize("n,c", [(25, 5), (6, 6), (4, 1), (40, 13)])  # 5-way 5-shot, 1-shot, one class, C > tile
def test_native_matches_reference(n, c, d, init, weight_decay, meta_sgd):
    x, y = support_set(n * c + d, n, c, d)
    rng = np.random.default_rng(d)
    steps = (rng.uniform(0.1, 1.0, (c, d)), rng.uniform(0.1, 1.0, c)) if meta_sgd else (None, None)
    native = kernels.adapt_head(x, y, c, 30, 0.7, weight_decay, init, *steps, backend="native")
    assert kernels.last_backend() == "native-cpu"
    reference = kernels.adapt_head(x, y, c, 30, 0.7, weight_decay, init, *steps, backend="reference")
    assert kernels.last_backend() == "reference"
    for got, expected in zip(native, reference):
        assert got.dtype == np.float32 and got.shape == expected.shape
        # float32 iterates against float64 ones: a few float32 ulps per step of the largest entries.
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "n,c,d",
    [(25, 5, 64), (9, 3, 1), (200, 13, 300), (150, 7, 20)],  # K slices of the GEMMs: d or n above 128
)
def test_primal_and_dual_forms_agree(n, c, d):
    """The two ways the C++ carries W (W itself, or W = a * W0 + A X) give the same iterates."""
    from metaedge import _C

    x, y = support_set(n + c + d, n, c, d)
    reference = _reference.adapt_head(x, y, c, 25, 0.5, 0.02)
    for form in ("primal", "dual"):
        got = _C.adapt_head_cpu(x, y, c, 25, 0.5, 0.02, "prototypes", form=form)
        for g, e in zip(got, reference):
            np.testing.assert_allclose(g, e, rtol=0, atol=2e-5, err_msg=form)


def test_large_problem_runs_parallel_and_is_deterministic():
    # 100-way 10-shot, 512-d: above the OpenMP threshold. Panels go to whichever thread is free, but each output
    # is summed in one fixed order, so two runs agree to the bit.
    x, y = support_set(8, 1000, 100, 512)
    first = kernels.adapt_head(x, y, 100, steps=3, lr=0.5, weight_decay=0.01, backend="native")
    second = kernels.adapt_head(x, y, 100, steps=3, lr=0.5, weight_decay=0.01, backend="native")
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    reference = _reference.adapt_head(x, y, 100, 3, 0.5, 0.01)
    for got, expected in zip(first, reference):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


# ---- what the API accepts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_accepts_float64_int32_lists_and_torch_inputs(backend):
    x, y = support_set(9, 20, 4, 7)
    expected = _reference.adapt_head(x, y, 4, 10, 0.5)
    for xx, yy in [
        (x.astype(np.float64), y.astype(np.int32)),
        (x.tolist(), y.tolist()),
        (torch.from_numpy(x).requires_grad_(), torch.from_numpy(y)),
        (np.asfortranarray(x), y.astype(np.uint8)),
    ]:
        w, b = kernels.adapt_head(xx, yy, 4, 10, 0.5, backend=backend)
        assert isinstance(w, np.ndarray) and w.dtype == b.dtype == np.float32 and w.flags.c_contiguous
        np.testing.assert_allclose(w, expected[0], atol=1e-5)
        np.testing.assert_allclose(b, expected[1], atol=1e-5)


def test_device_inputs_fall_back_to_the_host_without_cuda_kernels(monkeypatch):
    """The CUDA-input path, run here on CPU tensors posing as device ones: no CUDA kernels -> host, tensors back."""
    monkeypatch.setattr(kernels, "_on_cuda", lambda x: isinstance(x, torch.Tensor))
    monkeypatch.setattr(kernels, "cuda_available", lambda: False)
    x, y = support_set(10, 20, 4, 7)
    lr_bias = torch.full((4,), 0.25)
    w, b = kernels.adapt_head(torch.from_numpy(x).double(), y.astype(np.int32), 4, 10, 0.5, lr_bias=lr_bias)
    assert isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor) and w.dtype == b.dtype == torch.float32
    assert kernels.last_backend() == "native-cpu"
    expected = _reference.adapt_head(x, y, 4, 10, 0.5, lr_bias=np.full(4, 0.25))
    np.testing.assert_allclose(w.numpy(), expected[0], atol=1e-5)
    np.testing.assert_allclose(b.numpy(), expected[1], atol=1e-5)
    with pytest.raises(KernelInputError, match=re.escape("lr_bias must have shape (C,) = (4,), got (5,)")):
        kernels.adapt_head(torch.from_numpy(x), y, 4, lr_bias=torch.ones(5))
    with pytest.raises(KernelInputError, match="lr_weight must hold real numbers"):
        kernels.adapt_head(torch.from_numpy(x), y, 4, lr_weight=torch.ones(4, 7, dtype=torch.complex64))


# ---- what the API rejects, identically on every backend ----------------------------------------------------

X = np.ones((4, 3), np.float32)
Y = np.array([0, 1, 2, 0])
BAD_INPUTS = {  # case: (positional arguments after (X, Y, 3), keyword arguments, message)
    "init-unknown": ((), {"init": "random"}, "unknown init 'random'; choose one of 'prototypes', 'zeros'"),
    "steps-negative": ((-1,), {}, "steps must be >= 0, got -1"),
    "steps-float": ((2.5,), {}, "steps must be an integer, got 2.5"),
    "steps-bool": ((True,), {}, "steps must be an integer, got True"),
    "lr-nan": ((5, float("nan")), {}, "lr must be a finite float32 number, got nan"),
    "lr-too-big": ((5, 1e300), {}, "lr must be a finite float32 number, got 1e+300"),
    "lr-string": ((5, "fast"), {}, "lr must be a finite float32 number, got 'fast'"),
    "weight-decay-inf": ((5, 0.1, np.inf), {}, "weight_decay must be a finite float32 number, got inf"),
    "lr-weight-shape": ((), {"lr_weight": np.ones((3, 4))}, "lr_weight must have shape (C, D) = (3, 3), got (3, 4)"),
    "lr-weight-1d": ((), {"lr_weight": np.ones(3)}, "lr_weight must have shape (C, D) = (3, 3), got (3,)"),
    "lr-bias-shape": ((), {"lr_bias": np.ones((3, 1))}, "lr_bias must have shape (C,) = (3,), got (3, 1)"),
    "lr-weight-nan": ((), {"lr_weight": np.full((3, 3), np.nan)}, "lr_weight must hold finite numbers"),
    "lr-bias-inf": ((), {"lr_bias": [0.1, np.inf, 0.1]}, "lr_bias must hold finite numbers"),
    "lr-weight-strings": ((), {"lr_weight": [["a"] * 3] * 3}, "lr_weight must hold real numbers"),
}
BAD_ARRAYS = {  # case: (embeddings, labels, num_classes, message)
    "embeddings-1d": (X[0], Y[:3], 3, "embeddings must be 2-D (N, D), got shape (3,)"),
    "labels-float": (X, Y * 1.0, 3, "labels must be integers, got dtype float64"),
    "n-mismatch": (X, Y[:3], 3, "embeddings has 4 rows but labels has 3 entries"),
    "num-classes-0": (X, Y, 0, "num_classes must be >= 1, got 0"),
    "no-features": (np.zeros((4, 0)), Y, 3, "embeddings is empty: shape (4, 0)"),
    "label-too-big": (X, [0, 1, 7, 0], 3, "labels[2] = 7 is out of range for num_classes=3"),
    "label-negative": (X, [0, -1, 2, 9], 3, "labels[1] = -1 is out of range for num_classes=3"),
    "empty-class": (X, [0, 1, 1, 0], 3, "class 2 has no samples"),
}


def _call(case: str, backend: str):
    if case in BAD_INPUTS:
        args, kwargs, _ = BAD_INPUTS[case]
        return kernels.adapt_head(X, Y, 3, *args, **kwargs, backend=backend)
    emb, lab, c, _ = BAD_ARRAYS[case]
    return kernels.adapt_head(emb, lab, c, backend=backend)


def _message(case: str) -> str:
    return BAD_INPUTS[case][2] if case in BAD_INPUTS else BAD_ARRAYS[case][3]


@pytest.mark.parametrize("case", [*BAD_INPUTS, *BAD_ARRAYS])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_raise_kernel_input_error(backend, case):
    with pytest.raises(KernelInputError, match=re.escape(_message(case))):
        _call(case, backend)


@pytest.mark.parametrize("case", [*BAD_INPUTS, *BAD_ARRAYS])
def test_native_and_reference_reject_with_the_same_words(case):
    errors = []
    for backend in ("native", "reference"):
        with pytest.raises(KernelInputError) as info:
            _call(case, backend)
        errors.append(str(info.value))
    assert errors[0] == errors[1]


def test_extension_checks_its_own_arguments():
    """Called directly, past every Python check, the C++ still refuses what it cannot compute safely."""
    from metaedge import _C

    emb, ok = np.ones((4, 3), np.float32), np.array([0, 1, 2, 0])
    for args, kwargs, message in [
        ((emb, np.array([0, 1, 1 << 40, 0]), 3, 5, 0.1, 0.0, "zeros"), {}, "labels[2] = 1099511627776 is out of range"),
        ((emb, np.array([0, 0, 1, 0]), 3, 5, 0.1, 0.0, "prototypes"), {}, "class 2 has no samples"),
        ((emb, ok, 3, -2, 0.1, 0.0, "zeros"), {}, "steps must be >= 0, got -2"),
        ((emb, ok, 3, 5, float("inf"), 0.0, "zeros"), {}, "lr must be a finite float32 number, got inf"),
        ((emb, ok, 3, 5, 0.1, float("nan"), "zeros"), {}, "weight_decay must be a finite float32 number, got nan"),
        ((emb, ok, 3, 5, 0.1, 0.0, "ones"), {}, "unknown init 'ones'; choose one of 'prototypes', 'zeros'"),
        ((emb, ok, 3, 5, 0.1, 0.0, "zeros"), {"form": "fast"}, "unknown form 'fast'"),
        ((emb, ok, 3, 5, 0.1, 0.0, "zeros"), {"lr_weight": np.ones((3, 2), np.float32)}, "got (3, 2)"),
        ((emb, ok, 3, 5, 0.1, 0.0, "zeros"), {"lr_bias": np.ones(4, np.float32)}, "lr_bias must have shape (C,)"),
        ((emb, ok, 3, 5, 0.1, 0.0, "zeros"), {"lr_bias": np.array([1, np.nan, 1], np.float32)}, "lr_bias must hold"),
        (
            (emb, ok, 3, 5, 0.1, 0.0, "zeros"),
            {"lr_weight": np.ones((3, 3), np.float32), "form": "dual"},
            "form='dual' needs the scalar weight step size",
        ),
        ((emb[0], ok[:3], 3, 5, 0.1, 0.0, "zeros"), {}, "embeddings must be 2-D (N, D), got shape (3,)"),
        ((emb, ok[:3], 3, 5, 0.1, 0.0, "zeros"), {}, "embeddings has 4 rows but labels has 3 entries"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            _C.adapt_head_cpu(*args, **kwargs)


# ---- CUDA (skipped where there is no CUDA build or no GPU) ----------------------------------------------------


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize(
    "n,c,d",
    [(25, 5, 64), (6, 6, 7), (4, 1, 130), (100, 20, 65), (1000, 100, 512)],  # the last: past one block's memory
)
@pytest.mark.parametrize("init,weight_decay", [("prototypes", 0.05), ("zeros", 0.0)])
def test_cuda_matches_reference(n, c, d, init, weight_decay):
    x, y = support_set(n + c + d, n, c, d)
    w, b = kernels.adapt_head(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), c, 20, 0.5, weight_decay, init)
    assert kernels.last_backend() == "native-cuda"
    assert w.is_cuda and b.is_cuda and w.dtype == torch.float32 and w.shape == (c, d) and b.shape == (c,)
    expected = _reference.adapt_head(x, y, c, 20, 0.5, weight_decay, init)
    np.testing.assert_allclose(w.cpu().numpy(), expected[0], rtol=0, atol=5e-5)
    np.testing.assert_allclose(b.cpu().numpy(), expected[1], rtol=0, atol=5e-5)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("n,c,d", [(30, 6, 33), (1000, 100, 512)])
def test_cuda_meta_sgd_matches_reference(n, c, d):
    x, y = support_set(11, n, c, d)
    rng = np.random.default_rng(12)
    lr_weight = rng.uniform(0.05, 1.5, (c, d)).astype(np.float32)
    lr_bias = rng.uniform(0.05, 1.5, c).astype(np.float32)
    w, b = kernels.adapt_head(
        torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda(), c, 15, 0.3, 0.05, "prototypes",
        torch.from_numpy(lr_weight).cuda(), lr_bias,  # step sizes from the device and from the host
    )  # fmt: skip
    expected = _reference.adapt_head(x, y, c, 15, 0.3, 0.05, "prototypes", lr_weight, lr_bias)
    np.testing.assert_allclose(w.cpu().numpy(), expected[0], rtol=0, atol=5e-5)
    np.testing.assert_allclose(b.cpu().numpy(), expected[1], rtol=0, atol=5e-5)


@pytest.mark.cuda
@requires_cuda
def test_cuda_checks_labels_and_step_sizes_on_the_device():
    emb = torch.ones(4, 3, device="cuda")
    for labels, kwargs, message in [
        ([0, 1, 7, 0], {}, "labels[2] = 7 is out of range for num_classes=3"),
        ([0, 1, 1, 0], {}, "class 2 has no samples"),
        ([0, 1, 2, 0], {"lr_bias": torch.tensor([1.0, float("nan"), 1.0], device="cuda")}, "lr_bias must hold finite"),
    ]:
        with pytest.raises(KernelInputError, match=re.escape(message)):
            kernels.adapt_head(emb, torch.tensor(labels, device="cuda"), 3, **kwargs)
    w, b = kernels.adapt_head(emb, torch.tensor([0, 1, 2, 0], device="cuda"), 3, steps=0)  # still usable
    np.testing.assert_allclose(w.cpu().numpy(), np.full((3, 3), 3**-0.5), rtol=1e-6)
    assert not b.cpu().numpy().any()
