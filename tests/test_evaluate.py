"""Evaluation statistics and reproducibility."""

from __future__ import annotations

import math

import pytest
import torch
from test_checkpoint import META

from metaedge import checkpoint as ckpt
from metaedge.data import PreprocessSpec, open_dataset
from metaedge.evaluate import evaluate, mean_ci95


def test_mean_ci95_golden():
    mean, ci = mean_ci95([0.0, 1.0, 1.0, 1.0])
    assert mean == pytest.approx(0.75)
    assert ci == pytest.approx(1.96 * 0.5 / math.sqrt(4))  # sample std of (0, 1, 1, 1) is 0.5
    assert math.isnan(mean_ci95([1.0])[1])


def test_same_seed_same_numbers_and_seed_matters(omniglot_zips):
    data = open_dataset(omniglot_zips).subset(["Tagalog"]).load(PreprocessSpec())
    torch.manual_seed(0)
    method = ckpt.build_method(META)
    run = lambda seed: evaluate(method, data, way=5, shot=1, query=3, episodes=50, seed=seed)  # noqa: E731
    a, b, c = run(0), run(0), run(1)
    assert a.accuracy == b.accuracy and a.ci95 == b.ci95
    assert a.accuracy != c.accuracy
    assert 0 < a.ci95 < 0.2 and a.groups == ["Tagalog"]
