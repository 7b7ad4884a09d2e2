"""metaedge.kernels: the native kernels against the numpy reference and torch, golden values, rejected inputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metaedge import _reference, kernels
from metaedge.errors import KernelInputError, MetaedgeError

# Both backends run everywhere: tests/conftest.py refuses a metaedge without its native kernels.
BACKENDS = ["native", "reference"]
requires_cuda = pytest.mark.skipif(not kernels.cuda_available(), reason="no CUDA build of metaedge._C or no GPU")

# Not multiples of any SIMD width (1, 3, 7, 65, 130) next to one that is (64): the vector loops' tails.
DIMS = [1, 3, 7, 64, 65, 130]


def episode(seed: int, n: int, c: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """embeddings (n, d) float32 and labels (n,) int64 with every class present and class 0 exactly once."""
    rng = np.random.default_rng(seed)
    rest = rng.integers(1, c, n - c) if c > 1 else np.zeros(n - c, dtype=np.int64)
    labels = rng.permutation(np.concatenate([np.arange(c), rest]))
    return rng.standard_normal((n, d)).astype(np.float32), labels


def scores(seed: int, m: int, c: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """queries (m, d) and prototypes (c, d), float32; two queries sit on top of a prototype (distance ~ 0)."""
    rng = np.random.default_rng(seed)
    q, p = rng.standard_normal((m, d)).astype(np.float32), rng.standard_normal((c, d)).astype(np.float32)
    q[: min(2, m)] = p[: min(2, m)] + np.float32(1e-3)
    return q, p


# ---- golden values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_prototypes_golden(backend):
    emb = np.array([[1, 2], [3, 6], [0, 5], [-3, 4]], np.float32)
    labels = np.array([0, 0, 1, 2])  # classes 1 and 2 have one sample each
    raw = kernels.prototypes(emb, labels, 3, normalize=False, backend=backend)
    np.testing.assert_array_equal(raw, [[2, 4], [0, 5], [-3, 4]])
    unit = kernels.prototypes(emb, labels, 3, backend=backend)
    np.testing.assert_allclose(unit, [[1 / 5**0.5, 2 / 5**0.5], [0, 1], [-0.6, 0.8]], rtol=1e-7)
    assert raw.dtype == unit.dtype == np.float32 and unit.shape == (3, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_golden(backend):
    q = np.array([[1, 0], [0, 2]], np.float32)
    p = np.array([[1, 0], [3, 4]], np.float32)
    # ||q - p||^2: (0, 20; 5, 13). cos: (1, 3/5; 0, 4/5).
    np.testing.assert_allclose(
        kernels.logits(q, p, "sqeuclidean", scale=0.5, backend=backend), [[0, -10], [-2.5, -6.5]], rtol=1e-7
    )
    np.testing.assert_allclose(kernels.logits(q, p, "cosine", scale=10, backend=backend), [[10, 6], [0, 8]], rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_vectors_give_zeros_not_nan(backend):
    # The 1e-12 floor of the norm: a zero mean stays zero, a zero query scores 0 against everything.
    protos = kernels.prototypes(np.array([[1.0, -2.0], [-1.0, 2.0]]), [0, 0], 1, backend=backend)
    np.testing.assert_array_equal(protos, [[0, 0]])
    out = kernels.logits(np.zeros((1, 2)), np.array([[1.0, 1.0], [0.0, 0.0]]), "cosine", scale=3, backend=backend)
    np.testing.assert_array_equal(out, [[0, 0]])


# ---- native against the reference, and against torch ---------------------------------------------------------


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("n,c", [(5, 5), (23, 4), (200, 17)])
def test_prototypes_native_matches_reference(n, c, d, normalize):
    emb, labels = episode(n + d, n, c, d)
    native = kernels.prototypes(emb, labels, c, normalize, backend="native")
    assert kernels.last_backend() == "native-cpu"
    reference = kernels.prototypes(emb, labels, c, normalize, backend="reference")
    assert kernels.last_backend() == "reference"
    assert native.dtype == np.float32 and native.shape == (c, d)
    # Both sum in float64 and round once: equal up to the order of the float64 additions.
    np.testing.assert_allclose(native, reference, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("metric,scale", [("sqeuclidean", 0.5), ("cosine", 12.5)])
@pytest.mark.parametrize("m,c", [(1, 1), (9, 5), (75, 20)])
def test_logits_native_matches_reference(m, c, d, metric, scale):
    q, p = scores(m * c + d, m, c, d)
    native = kernels.logits(q, p, metric, scale, backend="native")
    reference = _reference.logits(q, p, metric, scale)
    assert native.dtype == np.float32 and native.shape == (m, c)
    # float32 accumulation against float64: relative error ~ sqrt(D) ulp, absolute on values near 0.
    np.testing.assert_allclose(native, reference, rtol=2e-5, atol=2e-5 * scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch(backend):
    """An independent definition: index_add_ means, F.normalize, cdist and a normalised matmul."""
    emb, labels = episode(7, 60, 6, 65)
    e, lab = torch.from_numpy(emb).double(), torch.from_numpy(labels)
    sums = torch.zeros(6, 65, dtype=torch.float64).index_add_(0, lab, e)
    means = sums / torch.bincount(lab, minlength=6).unsqueeze(1)
    raw = kernels.prototypes(emb, labels, 6, normalize=False, backend=backend)
    np.testing.assert_allclose(raw, means.numpy(), rtol=1e-6, atol=1e-7)
    unit = kernels.prototypes(emb, labels, 6, backend=backend)
    np.testing.assert_allclose(unit, F.normalize(means, dim=1).numpy(), rtol=1e-6, atol=1e-7)

    q = torch.from_numpy(scores(8, 30, 6, 65)[0]).double()
    expected_sq = -2.0 * torch.cdist(q, means).pow(2)
    got_sq = kernels.logits(q.float(), means.float(), "sqeuclidean", scale=2.0, backend=backend)
    np.testing.assert_allclose(got_sq, expected_sq.numpy(), rtol=2e-5, atol=1e-4)
    expected_cos = 10.0 * F.normalize(q, dim=1) @ F.normalize(means, dim=1).T
    got_cos = kernels.logits(q.float(), means.float(), "cosine", scale=10.0, backend=backend)
    np.testing.assert_allclose(got_cos, expected_cos.numpy(), rtol=1e-5, atol=1e-5)


def test_large_inputs_take_the_parallel_path_and_agree_with_the_serial_one():
    # Well above the kernels' OpenMP threshold of 2^18 element operations; the slices below are far under it,
    # so they run on one thread. Same summation order either way: the results must be bit-identical.
    emb, labels = episode(11, 20_000, 50, 130)
    parallel = kernels.prototypes(emb, labels, 50, backend="native")
    for k in (0, 17, 49):  # class 0 has a single sample
        rows = emb[labels == k]
        serial = kernels.prototypes(rows, np.zeros(len(rows), np.int64), 1, backend="native")
        np.testing.assert_array_equal(parallel[k], serial[0])
    np.testing.assert_allclose(parallel, _reference.prototypes(emb, labels, 50), rtol=1e-6, atol=1e-7)

    q, p = scores(12, 1024, 50, 130)
    for metric in ("sqeuclidean", "cosine"):
        parallel = kernels.logits(q, p, metric, 3.0, backend="native")
        for i in (0, 513, 1023):
            np.testing.assert_array_equal(
                parallel[i], kernels.logits(q[i : i + 1], p, metric, 3.0, backend="native")[0]
            )
        np.testing.assert_allclose(parallel, _reference.logits(q, p, metric, 3.0), rtol=2e-5, atol=6e-5)


# ---- what the API accepts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_accepts_strided_float64_int_list_and_torch_inputs(backend):
    emb, labels = episode(3, 30, 4, 7)
    expected_protos = _reference.prototypes(emb, labels, 4)
    wide = np.zeros((30, 14), np.float64)
    wide[:, ::2] = emb  # a strided float64 view
    variants = [
        (wide[:, ::2], labels),
        (np.asfortranarray(emb), labels.astype(np.int32)),
        (emb.tolist(), labels.astype(np.uint8).tolist()),
        (torch.from_numpy(emb).requires_grad_(), torch.from_numpy(labels)),
        (torch.from_numpy(emb).to(torch.bfloat16).float(), labels),  # a float32 tensor that went through bf16
    ]
    for i, (e, lab) in enumerate(variants):
        out = kernels.prototypes(e, lab, 4, backend=backend)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.flags.c_contiguous
        ref = expected_protos if i < 4 else _reference.prototypes(np.asarray(e), labels, 4)
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)

    q, p = scores(4, 10, 4, 7)
    expected_logits = _reference.logits(q, p, "sqeuclidean", 2.0)
    for qq, pp in [
        (q.astype(np.float64)[::-1][::-1], np.asfortranarray(p)),
        (torch.from_numpy(q).requires_grad_(), torch.from_numpy(p).double()),
        (np.round(q * 1000).astype(np.int64) / 1000, p.tolist()),
    ]:
        out = kernels.logits(qq, pp, "sqeuclidean", scale=2, backend=backend)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (10, 4)
        np.testing.assert_allclose(out, expected_logits, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_queries_give_an_empty_result(backend):
    out = kernels.logits(np.zeros((0, 3)), np.ones((4, 3)), "cosine", backend=backend)
    assert out.shape == (0, 4) and out.dtype == np.float32


def test_auto_falls_back_to_the_reference_and_native_refuses_without_the_module(monkeypatch):
    emb, labels = episode(5, 12, 3, 4)
    monkeypatch.setattr(kernels, "_C", None)
    assert not kernels.native_available() and not kernels.cuda_available()
    out = kernels.prototypes(emb, labels, 3)
    assert kernels.last_backend() == "reference"
    np.testing.assert_array_equal(out, _reference.prototypes(emb, labels, 3))
    with pytest.raises(MetaedgeError, match="metaedge._C is not available"):
        kernels.logits(emb, out, backend="native")


def test_device_inputs_fall_back_to_the_host_without_cuda_kernels(monkeypatch):
    """The CUDA-input path, run here on CPU tensors posing as device ones: no CUDA kernels -> host, result a tensor."""
    monkeypatch.setattr(kernels, "_on_cuda", lambda x: isinstance(x, torch.Tensor))
    monkeypatch.setattr(kernels, "cuda_available", lambda: False)
    emb, labels = episode(9, 40, 4, 7)
    protos = kernels.prototypes(torch.from_numpy(emb).double(), labels.astype(np.int32), 4)
    assert isinstance(protos, torch.Tensor) and protos.dtype == torch.float32
    assert kernels.last_backend() == "native-cpu"
    np.testing.assert_allclose(protos.numpy(), _reference.prototypes(emb, labels, 4), rtol=1e-6, atol=1e-7)
    out = kernels.logits(torch.from_numpy(emb), protos.numpy(), "sqeuclidean", 2.0, backend="reference")
    assert isinstance(out, torch.Tensor) and kernels.last_backend() == "reference"
    np.testing.assert_allclose(out.numpy(), _reference.logits(emb, protos.numpy(), "sqeuclidean", 2.0), rtol=1e-6)
    with pytest.raises(KernelInputError, match="labels must be integers, got dtype torch.float32"):
        kernels.prototypes(torch.from_numpy(emb), torch.zeros(40), 4)
    with pytest.raises(KernelInputError, match=re.escape("labels[0] = 4 is out of range for num_classes=4")):
        kernels.prototypes(torch.from_numpy(emb), np.full(40, 4), 4)
    with pytest.raises(MetaedgeError, match="CUDA"):
        kernels.logits(torch.from_numpy(emb), protos, backend="native")


def test_auto_uses_the_native_module_when_built():
    emb, labels = episode(6, 12, 3, 4)
    kernels.logits(emb, kernels.prototypes(emb, labels, 3))
    assert kernels.last_backend() == "native-cpu"
    assert isinstance(kernels.cuda_available(), bool)


# ---- what the API rejects, identically on every backend ----------------------------------------------------

E = np.ones((4, 3), np.float32)
L = np.array([0, 1, 2, 0])
Q = np.ones((2, 3), np.float32)
P = np.ones((3, 3), np.float32)

P0 = np.zeros((0, 3))
BAD_INPUTS = {  # case: (kernel, positional arguments, message)
    "embeddings-1d": (kernels.prototypes, (E[0], L[:3], 3), "embeddings must be 2-D (N, D), got shape (3,)"),
    "embeddings-complex": (kernels.prototypes, (E.astype(complex), L, 3), "embeddings must hold real numbers"),
    "embeddings-strings": (kernels.prototypes, ([["a"]], [0], 1), "embeddings must hold real numbers"),
    "embeddings-ragged": (kernels.prototypes, ([[1.0], [1.0, 2.0]], [0, 0], 1), "embeddings is not an array"),
    "labels-2d": (kernels.prototypes, (E, L[:, None], 3), "labels must be 1-D (N,), got shape (4, 1)"),
    "labels-float": (kernels.prototypes, (E, L * 1.0, 3), "labels must be integers, got dtype float64"),
    "n-mismatch": (kernels.prototypes, (E, L[:3], 3), "embeddings has 4 rows but labels has 3 entries"),
    "num-classes-0": (kernels.prototypes, (E, L, 0), "num_classes must be >= 1, got 0"),
    "num-classes-float": (kernels.prototypes, (E, L, 2.5), "num_classes must be an integer, got 2.5"),
    "label-too-big": (kernels.prototypes, (E, [0, 1, 7, 0], 3), "labels[2] = 7 is out of range for num_classes=3"),
    "label-negative": (kernels.prototypes, (E, [0, -1, 2, 9], 3), "labels[1] = -1 is out of range for num_classes=3"),
    "empty-class": (kernels.prototypes, (E, [0, 1, 1, 0], 3), "class 2 has no samples"),
    "no-embeddings": (kernels.prototypes, (P0, L[:0], 3), "embeddings is empty: shape (0, 3)"),
    "no-features": (kernels.prototypes, (np.zeros((4, 0)), L, 3), "embeddings is empty: shape (4, 0)"),
    "queries-1d": (kernels.logits, (Q[0], P), "queries must be 2-D (M, D), got shape (3,)"),
    "prototypes-3d": (kernels.logits, (Q, P[None]), "prototypes must be 2-D (C, D), got shape (1, 3, 3)"),
    "d-mismatch": (kernels.logits, (Q, P[:, :2]), "queries has D=3 features but prototypes has D=2"),
    "no-prototypes": (kernels.logits, (Q, P0), "prototypes is empty: shape (0, 3)"),
    "unknown-metric": (kernels.logits, (Q, P, "l1"), "unknown metric 'l1'; choose one of"),
    "scale-nan": (kernels.logits, (Q, P, "cosine", float("nan")), "scale must be a finite float32 number, got nan"),
    "scale-inf": (kernels.logits, (Q, P, "cosine", -np.inf), "scale must be a finite float32 number, got -inf"),
    "scale-too-big": (kernels.logits, (Q, P, "sqeuclidean", 1e300), "scale must be a finite float32 number"),
    "scale-string": (kernels.logits, (Q, P, "cosine", "big"), "scale must be a finite float32 number, got 'big'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_raise_kernel_input_error(backend, case):
    kernel, args, message = BAD_INPUTS[case]
    with pytest.raises(KernelInputError, match=re.escape(message)):
        kernel(*args, backend=backend)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_native_and_reference_reject_with_the_same_words(case):
    kernel, args, _ = BAD_INPUTS[case]
    errors = []
    for backend in ("native", "reference"):
        with pytest.raises(KernelInputError) as info:
            kernel(*args, backend=backend)
        errors.append(str(info.value))
    assert errors[0] == errors[1]


def test_unknown_backend_is_rejected():
    with pytest.raises(KernelInputError, match="unknown backend 'gpu'"):
        kernels.prototypes(E, L, 3, backend="gpu")


def test_extension_checks_its_own_arguments():
    """Called directly, past every Python check, the C++ still refuses what it cannot compute safely."""
    from metaedge import _C

    assert _C.cuda_built() in (True, False) and "metaedge" in _C.__doc__
    emb = np.ones((4, 3), np.float32)
    for args, message in [
        ((emb, np.array([0, 1, 1 << 40, 0]), 3, True), "labels[2] = 1099511627776 is out of range for num_classes=3"),
        ((emb, np.array([0, 1, -5, 0]), 3, False), "labels[2] = -5 is out of range"),
        ((emb, np.array([0, 0, 0, 0]), 2, True), "class 1 has no samples"),
        ((emb, np.array([0, 0, 0]), 1, True), "embeddings has 4 rows but labels has 3 entries"),
        ((emb[0], np.array([0, 0, 0]), 1, True), "embeddings must be 2-D (N, D), got shape (3,)"),
        ((emb, np.zeros((4, 1), np.int64), 1, True), "labels must be 1-D (N,), got shape (4, 1)"),
        ((emb, np.zeros(4, np.int64), -1, True), "num_classes must be >= 1, got -1"),
        ((np.ones((0, 3), np.float32), np.zeros(0, np.int64), 1, True), "embeddings is empty: shape (0, 3)"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            _C.prototypes_cpu(*args)
    for args, message in [
        ((emb, emb, "l2", 1.0), "unknown metric 'l2'"),
        ((emb, emb, "cosine", float("inf")), "scale must be a finite float32 number, got inf"),
        ((emb, emb[:, :2], "cosine", 1.0), "queries has D=3 features but prototypes has D=2"),
        ((emb[0], emb, "cosine", 1.0), "queries must be 2-D (M, D), got shape (3,)"),
        ((emb, np.ones((0, 3), np.float32), "cosine", 1.0), "prototypes is empty: shape (0, 3)"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            _C.logits_cpu(*args)


# ---- CUDA (skipped where there is no CUDA build or no GPU) ----------------------------------------------------


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("n,c", [(5, 5), (200, 17), (3000, 40)])
def test_cuda_prototypes_match_reference(n, c, d, normalize):
    emb, labels = episode(n + d, n, c, d)
    out = kernels.prototypes(torch.from_numpy(emb).cuda(), torch.from_numpy(labels).cuda(), c, normalize)
    assert kernels.last_backend() == "native-cuda"
    assert out.is_cuda and out.dtype == torch.float32 and out.shape == (c, d)
    # float32 sums on the GPU against the float64 reference.
    np.testing.assert_allclose(
        out.cpu().numpy(), _reference.prototypes(emb, labels, c, normalize), rtol=2e-5, atol=2e-6
    )


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("metric,scale", [("sqeuclidean", 0.5), ("cosine", 12.5)])
@pytest.mark.parametrize("m,c", [(1, 1), (75, 20), (300, 33)])
def test_cuda_logits_match_reference(m, c, d, metric, scale):
    q, p = scores(m * c + d, m, c, d)
    out = kernels.logits(torch.from_numpy(q).cuda(), torch.from_numpy(p).cuda(), metric, scale)
    assert kernels.last_backend() == "native-cuda"
    assert out.is_cuda and out.dtype == torch.float32 and out.shape == (m, c)
    np.testing.assert_allclose(out.cpu().numpy(), _reference.logits(q, p, metric, scale), rtol=2e-5, atol=2e-5 * scale)


@pytest.mark.cuda
@requires_cuda
def test_cuda_accepts_mixed_strided_float64_inputs_and_side_streams():
    emb, labels = episode(21, 500, 10, 65)
    wide = torch.zeros(500, 130, dtype=torch.float64, device="cuda")
    wide[:, ::2] = torch.from_numpy(emb).double().cuda()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        protos = kernels.prototypes(wide[:, ::2], labels.astype(np.int32), 10)  # labels from the host
        out = kernels.logits(wide[:7, ::2], protos.cpu().numpy(), "cosine", 4.0)  # prototypes from the host
    stream.synchronize()
    assert protos.device == out.device == wide.device
    expected = _reference.prototypes(emb, labels, 10)
    np.testing.assert_allclose(protos.cpu().numpy(), expected, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(
        out.cpu().numpy(), _reference.logits(emb[:7], expected, "cosine", 4.0), rtol=2e-5, atol=1e-4
    )
    empty = kernels.logits(torch.zeros(0, 65, device="cuda"), protos, "sqeuclidean")
    assert empty.shape == (0, 10) and empty.is_cuda


@pytest.mark.cuda
@requires_cuda
def test_cuda_checks_labels_on_the_device():
    emb = torch.ones(4, 3, device="cuda")
    for labels, message in [([0, 1, 7, 0], "labels[2] = 7 is out of range for num_classes=3"),
                            ([0, -2, 2, 9], "labels[1] = -2 is out of range for num_classes=3"),
                            ([0, 1, 1, 0], "class 2 has no samples")]:  # fmt: skip
        with pytest.raises(KernelInputError, match=re.escape(message)):
            kernels.prototypes(emb, torch.tensor(labels, device="cuda"), 3)
    # The device is still usable after a rejected call.
    ok = kernels.prototypes(emb, torch.tensor([0, 1, 2, 0], device="cuda"), 3, normalize=False)
    np.testing.assert_array_equal(ok.cpu().numpy(), np.ones((3, 3)))


@pytest.mark.cuda
@requires_cuda
def test_cuda_reference_backend_computes_on_the_host_and_returns_on_the_device():
    emb, labels = episode(22, 40, 4, 7)
    out = kernels.prototypes(torch.from_numpy(emb).cuda(), torch.from_numpy(labels).cuda(), 4, backend="reference")
    assert kernels.last_backend() == "reference" and out.is_cuda
    np.testing.assert_array_equal(out.cpu().numpy(), _reference.prototypes(emb, labels, 4))


@pytest.mark.cuda
@requires_cuda
def test_cuda_large_inputs():
    emb, labels = episode(23, 50_000, 100, 640)
    out = kernels.prototypes(torch.from_numpy(emb).cuda(), torch.from_numpy(labels).cuda(), 100)
    np.testing.assert_allclose(out.cpu().numpy(), _reference.prototypes(emb, labels, 100), rtol=1e-4, atol=1e-6)
    q, p = scores(24, 2000, 100, 640)
    got = kernels.logits(torch.from_numpy(q).cuda(), torch.from_numpy(p).cuda(), "sqeuclidean", 1.0)
    np.testing.assert_allclose(got.cpu().numpy(), _reference.logits(q, p, "sqeuclidean"), rtol=2e-5, atol=1e-3)
