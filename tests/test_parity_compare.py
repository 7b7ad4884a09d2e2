"""The parity gate's arithmetic on synthetic embeddings: each criterion at its bound, in milliseconds.

tests/test_parity_gates.py makes real exported graphs fail (a scaled weight, a wrong preprocessing, a blank
int8 calibration); it needs a trained model and an export per case. These pin `compare_embeddings` itself:
where each tolerance sits (a bound is met, a hair past it is not), which criterion a failure names, NaN and
shape refusals, and what the report records. Mutation testing of metaedge/parity.py runs this file.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from metaedge.data import LoadedDataset, PreprocessSpec
from metaedge.parity import TOLERANCES, ParityError, compare_embeddings

CLASSES, PER_CLASS, DIM = 8, 6, 4


def dataset() -> LoadedDataset:
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    return LoadedDataset(pixels=np.zeros((len(labels), 1, 1, 1), np.uint8), labels=labels,
                         drawers=np.tile(np.arange(PER_CLASS), CLASSES), class_groups=["g"] * CLASSES,
                         class_keys=[f"g/c{c}" for c in range(CLASSES)], spec=PreprocessSpec())  # fmt: skip


def embeddings(seed: int = 0) -> np.ndarray:
    """(48, 4): eight well separated classes, a little noise per image."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, DIM)) * 4
    return (centres.repeat(PER_CLASS, axis=0) + rng.normal(scale=0.1, size=(CLASSES * PER_CLASS, DIM))).astype(
        np.float32
    )


def nearest_prototype(support, support_labels, queries, way):
    protos = np.stack([support[support_labels == c].mean(0) for c in range(way)])
    with np.errstate(invalid="ignore"):  # inf - inf in the non-finite cases: a NaN distance, some answer
        return ((queries[:, None] - protos[None]) ** 2).sum(-1).argmin(1)


def compare(candidate, reference=None, precision="fp32", **kwargs):
    reference = embeddings() if reference is None else reference
    kwargs = {"episodes": 20, "way": 5, "shot": 1, "query": 2, **kwargs}
    return compare_embeddings(reference, candidate, dataset(), nearest_prototype, backend="onnxruntime",
                              precision=precision, **kwargs)  # fmt: skip


def test_identical_embeddings_pass_and_the_report_says_what_was_compared():
    z = embeddings()
    r = compare(z.copy(), way=20, shot=2, query=3, episodes=7)
    assert r.passed and r.failures == [] and r.max_abs_diff == 0.0 and r.agreement == 1.0
    assert r.min_cosine == pytest.approx(1.0, abs=1e-6)
    assert (r.backend, r.precision, r.images, r.episodes, r.shot, r.query) == ("onnxruntime", "fp32", 48, 7, 2, 3)
    assert r.way == CLASSES  # asked for 20-way, the data has 8 classes
    assert r.tolerances == TOLERANCES["fp32"] and r.to_dict()["failures"] == []


def test_max_abs_diff_is_met_at_its_bound_and_fails_past_it():
    # float64, so that a difference can equal the bound exactly (float32 has no 1e-3)
    z = np.zeros((CLASSES * PER_CLASS, DIM))
    z[:, 0] = 1.0 + np.arange(CLASSES).repeat(PER_CLASS)  # separable along one axis, all on one ray: cosine 1
    bound = TOLERANCES["fp32"]["max_abs_diff"]
    at = z.copy()
    at[0, 1] = bound
    r = compare(at, reference=z)
    assert r.max_abs_diff == bound
    assert r.passed, r.failures
    past = z.copy()
    past[0, 1] = 2 * bound
    r = compare(past, reference=z)
    assert r.max_abs_diff == pytest.approx(2 * bound, rel=1e-6)
    assert r.failures[0].startswith("max abs difference 0.002 > 0.001")
    # only that criterion: the direction moved by 2e-3 rad (cosine 0.999998 >= 0.99999), no decision changed
    assert len(r.failures) == 1 and not r.passed


def test_min_cosine_fails_alone_when_only_a_direction_changes():
    z = embeddings()
    tilted = z.copy()
    tilted[0] = z[0] * 0.999 + np.roll(z[0], 1) * 0.01  # one image turned a little, nothing else
    cos = float(z[0] @ tilted[0] / np.linalg.norm(z[0]) / np.linalg.norm(tilted[0]))
    r = compare(tilted, precision="int8")  # int8 does not judge element-wise differences
    assert r.min_cosine == pytest.approx(cos, abs=1e-6)
    tol = TOLERANCES["int8"]["min_cosine"]
    r = compare(tilted, precision="fp32")
    assert cos < TOLERANCES["fp32"]["min_cosine"] and any(f.startswith("min cosine similarity") for f in r.failures)
    # int8's bound sits lower: the same tilt passes there
    assert cos >= tol and compare(tilted, precision="int8").passed


def test_an_image_both_graphs_map_to_zero_is_the_same_answer_but_zero_against_nonzero_is_not():
    """A ReLU embedding can be all zero for an image (every unit dead: a trained ResNet-18 at 32x32 does it to
    some CIFAR photos); the same zero from both graphs is agreement, not a cosine of 0."""
    z = embeddings()
    z[[3, 17]] = 0.0
    r = compare(z.copy(), reference=z)
    assert r.passed and r.min_cosine == pytest.approx(1.0, abs=1e-6)
    lost = z.copy()
    lost[5] = 0.0  # the exported graph loses one image the reference still sees
    r = compare(lost, reference=z, precision="int8")
    assert r.min_cosine == 0.0 and any(f.startswith("min cosine similarity 0.000000") for f in r.failures)
    found = z.copy()
    found[3] = 1e-3  # and the other way round: something where the reference has nothing
    assert compare(found, reference=z, precision="int8").min_cosine == 0.0


def test_min_cosine_is_met_at_its_bound():
    z = np.zeros((CLASSES * PER_CLASS, 2))  # float64, each class a magnitude along one axis
    z[:, 0] = 1.0 + np.arange(CLASSES).repeat(PER_CLASS)
    for precision in ("int8", "fp16"):
        bound = TOLERANCES[precision]["min_cosine"]
        turned = z.copy()
        turned[0] = [bound, np.sqrt(1 - bound**2)]  # row 0 has length 1: its cosine is exactly the bound
        r = compare(turned, reference=z, precision=precision)
        assert r.min_cosine == bound and r.passed, (precision, r.failures)


def test_agreement_fails_alone_when_decisions_change_but_directions_do_not():
    # Classes differ only in a small component beside a large shared one. Moving half of each class's images one
    # class along that component keeps every cosine above 0.9999, and an episode whose support and query come
    # from different halves now answers the neighbouring class.
    big = np.zeros((CLASSES * PER_CLASS, DIM), np.float32)
    big[:, 0] = 100.0
    big[:, 1] = np.arange(CLASSES).repeat(PER_CLASS)
    moved = big.copy()
    moved[:, 1] += np.tile(np.arange(PER_CLASS) % 2, CLASSES)
    r = compare(moved, reference=big, precision="int8", episodes=50, way=CLASSES)
    assert r.min_cosine > 0.9999 and r.agreement < TOLERANCES["int8"]["min_agreement"]
    assert r.failures == [f"few-shot prediction agreement {r.agreement:.4f} < {TOLERANCES['int8']['min_agreement']}"]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_each_precision_applies_its_own_tolerances(precision):
    z = embeddings()
    r = compare(z * 1.01, precision=precision)  # 1% larger everywhere: same direction, same decisions
    assert r.tolerances == TOLERANCES[precision]
    assert r.passed == (precision != "fp32")  # only fp32 judges the element-wise difference
    assert TOLERANCES["fp32"]["min_cosine"] > TOLERANCES["fp16"]["min_cosine"] > TOLERANCES["int8"]["min_cosine"]
    assert TOLERANCES["int8"]["min_agreement"] < TOLERANCES["fp16"]["min_agreement"] < 1.0


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_rows_fail_and_are_counted(value):
    z = embeddings()
    bad = z.copy()
    bad[3, 2] = value
    bad[7] = value
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported in the report, not warned about on the way
        r = compare(bad, precision="int8")
    assert not r.passed and r.failures[0] == "2 of 48 embeddings not finite (NaN or inf)"
    assert any(f.startswith("min cosine similarity") for f in r.failures)  # a NaN never meets a bound


def test_another_shape_is_an_error_naming_both():
    z = embeddings()
    with pytest.raises(ParityError, match=r"onnxruntime: the exported graph gives embeddings of shape \(48, 3\), "
                                          r"the bundle \(48, 4\)$"):  # fmt: skip
        compare_embeddings(z, z[:, :3], dataset(), nearest_prototype, backend="onnxruntime",
                           reference_name="the bundle")  # fmt: skip
    with pytest.raises(ParityError, match=r"PyTorch \(48, 4\)"):
        compare(z[:47])


def test_defaults_are_the_exporters_protocol():
    """Exporters call with the defaults: fp32, 200 five-way one-shot episodes of five queries, seed 0."""
    z = embeddings()
    noisy = z + np.random.default_rng(1).normal(scale=2.0, size=z.shape).astype(np.float32)
    r = compare_embeddings(z, noisy, dataset(), nearest_prototype, backend="onnxruntime")
    assert (r.precision, r.episodes, r.way, r.shot, r.query) == ("fp32", 200, 5, 1, 5)
    assert r.tolerances == TOLERANCES["fp32"]
    assert r.agreement == compare(noisy, episodes=200, way=5, shot=1, query=5, seed=0).agreement


def test_episodes_are_seeded():
    z = embeddings()
    noisy = z + np.random.default_rng(1).normal(scale=2.0, size=z.shape).astype(np.float32)
    first, again = compare(noisy, seed=3, precision="int8"), compare(noisy, seed=3, precision="int8")
    other = [compare(noisy, seed=s, precision="int8").agreement for s in range(4, 10)]
    assert first.agreement == again.agreement and any(a != first.agreement for a in other)


def test_each_sides_accuracy_is_reported_beside_the_gate():
    """The accuracies on the agreement episodes are counted against the episodes' own labels, one per side, and
    judge nothing: the candidate below fails on agreement alone."""
    z = embeddings()
    same = compare(z.copy())
    assert same.reference_accuracy == same.candidate_accuracy == 1.0  # well separated classes
    # Half of each class's images (odd drawers) moved onto the next class's centre: an episode whose support and
    # query come from different halves answers wrong.
    moved = z.reshape(CLASSES, PER_CLASS, DIM).copy()
    moved[:, 1::2] = np.roll(moved[:, 1::2], 1, axis=0)
    r = compare(moved.reshape(-1, DIM), way=CLASSES, episodes=50)
    assert r.reference_accuracy == 1.0 and 0.0 < r.candidate_accuracy < 1.0
    assert r.candidate_accuracy == pytest.approx(r.agreement)  # the reference is always right here
    assert r.to_dict()["candidate_accuracy"] == r.candidate_accuracy
    assert not any("accuracy" in f for f in r.failures) and r.failures
