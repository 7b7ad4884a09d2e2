"""The shared kernel test vectors (csrc/tests/vectors, checked natively and on aarch64 by csrc/tests) through the
Python API: the native module must give the stored x86-64 results, and the float64 numpy reference must too, which
shows that the stored numbers are right and not merely repeatable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metaedge import kernels

VECTORS = Path(__file__).resolve().parents[1] / "csrc" / "tests" / "vectors"
# As in csrc/tests/kernel_tests.cpp: |got - expected| <= 1e-5 * max(1, |expected|).
TOLERANCE = 1e-5


def read_vector_file(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Parameters and arrays of one file: "key value" lines, and "name f32|i64 count" headers followed by values."""
    tokens = " ".join(line for line in path.read_text().splitlines() if not line.startswith("#")).split()
    params: dict[str, str] = {}
    arrays: dict[str, np.ndarray] = {}
    i = 0
    while i < len(tokens):
        key, value = tokens[i], tokens[i + 1]
        if value in ("f32", "i64"):
            count = int(tokens[i + 2])
            values = tokens[i + 3 : i + 3 + count]
            arrays[key] = np.array(values, dtype=np.float32 if value == "f32" else np.int64)
            i += 3 + count
        else:
            params[key] = value
            i += 2
    return params, arrays


def run(params: dict[str, str], arrays: dict[str, np.ndarray], backend: str) -> dict[str, np.ndarray]:
    """The call a file describes, through metaedge.kernels; outputs under the file's expected_* names."""
    kernel = params["kernel"]
    if kernel == "prototypes":
        n, d = int(params["n"]), int(params["d"])
        out = kernels.prototypes(
            arrays["embeddings"].reshape(n, d),
            arrays["labels"],
            int(params["num_classes"]),
            normalize=params["normalize"] == "1",
            backend=backend,
        )
        return {"expected": out}
    if kernel == "logits":
        m, c, d = int(params["m"]), int(params["c"]), int(params["d"])
        out = kernels.logits(
            arrays["queries"].reshape(m, d),
            arrays["prototypes"].reshape(c, d),
            metric=params["metric"],
            scale=float(params["scale"]),
            backend=backend,
        )
        return {"expected": out}
    assert kernel == "adapt_head", kernel
    n, d, c = int(params["n"]), int(params["d"]), int(params["num_classes"])
    lr_weight = arrays.get("lr_weight")
    weight, bias = kernels.adapt_head(
        arrays["embeddings"].reshape(n, d),
        arrays["labels"],
        c,
        steps=int(params["steps"]),
        lr=float(params["lr"]),
        weight_decay=float(params["weight_decay"]),
        init=params["init"],
        lr_weight=None if lr_weight is None else lr_weight.reshape(c, d),
        lr_bias=arrays.get("lr_bias"),
        backend=backend,
    )
    return {"expected_weight": weight, "expected_bias": bias}


def test_vectors_are_present():
    """The C++ tests name ten cases; losing the folder must not turn this module into silent skips."""
    assert len(sorted(VECTORS.glob("*.txt"))) == 10


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("path", sorted(VECTORS.glob("*.txt")), ids=lambda p: p.stem)
def test_kernels_reproduce_the_stored_vectors(path: Path, backend: str):
    params, arrays = read_vector_file(path)
    for key, got in run(params, arrays, backend).items():
        expected = arrays[key]
        got = np.asarray(got, dtype=np.float32).ravel()
        assert got.shape == expected.shape, key
        excess = np.abs(got.astype(np.float64) - expected) / np.maximum(1.0, np.abs(expected))
        assert excess.max() <= TOLERANCE, f"{key}: max |diff| / max(1, |expected|) = {excess.max():.3g}"
