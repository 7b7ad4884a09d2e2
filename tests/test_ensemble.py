"""Ensembles: members side by side at their own resolutions, scaled on training data, refused when incompatible."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import OMNIGLOT, OMNIGLOT_ZIPS
from typer.testing import CliRunner

from metaedge import checkpoint as ckpt
from metaedge.cli import app
from metaedge.data import open_dataset
from metaedge.ensemble import _spread, combine
from metaedge.errors import CheckpointError
from metaedge.evaluate import evaluate_checkpoint
from metaedge.exporter import export_checkpoint
from metaedge.models import Ensemble
from metaedge.train import TrainConfig, train

pytestmark = pytest.mark.slow


def _run(root, name, **kw):
    config = dict(data=[str(p) for p in OMNIGLOT_ZIPS], out=str(root / name), way=5, query=2, episodes=3,
                  val_every=3, val_episodes=2, width=8, val_groups=0, seed=0)  # fmt: skip
    train(TrainConfig(**{**config, **kw}))
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not all(p.is_file() for p in OMNIGLOT_ZIPS):
        pytest.skip(f"the shared Omniglot data is not at {OMNIGLOT}")
    root = tmp_path_factory.mktemp("ensemble")
    return {
        "small": _run(root, "small"),
        "large": _run(root, "large", depth=5, image_size=56, width=12),
        "cosine": _run(root, "cosine", metric="cosine"),
        "other_split": _run(root, "other_split", seed=1),
        "odd_size": _run(root, "odd_size", image_size=42),
    }


def test_the_embedding_is_each_member_on_its_own_resolution_scaled(runs, tmp_path):
    path = combine([runs["small"], runs["large"]], tmp_path / "ens")
    loaded = ckpt.load(path)
    small, large = ckpt.load(runs["small"]), ckpt.load(runs["large"])
    assert isinstance(loaded.method.backbone, Ensemble)
    assert loaded.preprocess.size == 56 and loaded.method.backbone.embedding_dim == 8 + 12
    members = loaded.meta["backbone"]["kwargs"]["members"]
    assert [m["size"] for m in members] == [28, 56]
    for m, run in zip(members, (small, large), strict=True):
        train_images = open_dataset(run.meta["data"]["roots"]).subset(run.meta["split"]["train"]).load(run.preprocess)
        assert m["scale"] == pytest.approx(1 / _spread(run, train_images), rel=1e-5)
    x = torch.rand(3, 1, 56, 56)
    with torch.no_grad():
        expected = torch.cat([
            small.method.embed(F.avg_pool2d(x, 2)) * members[0]["scale"], large.method.embed(x) * members[1]["scale"]
        ], dim=1)  # fmt: skip
        torch.testing.assert_close(loaded.method.embed(x), expected, atol=1e-5, rtol=1e-5)
    assert sorted(loaded.meta["split"]["test"]) == sorted(small.meta["split"]["test"])


def test_an_ensemble_exports_with_views_and_evaluates_as_a_bundle(runs, tmp_path):
    path = combine([runs["small"], runs["large"]], tmp_path / "ens")
    result = export_checkpoint(path, tmp_path / "bundle", parity_episodes=20, views=2)
    assert result.bundle.model_id.startswith("protonet-ensemble-") and result.bundle.model_id.endswith("-v2")
    held_out = evaluate_checkpoint(result.bundle.path, way=5, shot=1, query=1, episodes=20, seed=0)
    plain = evaluate_checkpoint(path, views=2, way=5, shot=1, query=1, episodes=20, seed=0)
    assert held_out.groups == plain.groups and abs(held_out.accuracy - plain.accuracy) <= 0.05


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (["small"], "at least two runs"),
        (["small", "cosine"], "only squared-euclidean ProtoNets"),
        (["small", "other_split"], "must share their test groups"),
        (["small", "odd_size"], "does not divide the largest"),
    ],
)
def test_incompatible_members_are_refused_and_nothing_is_written(runs, tmp_path, members, message):
    with pytest.raises(CheckpointError, match=message):
        combine([runs[m] for m in members], tmp_path / "ens")
    assert not (tmp_path / "ens").exists()


def test_the_command_line_refuses_to_overwrite_unless_asked(runs, tmp_path):
    runner = CliRunner()
    args = ["ensemble", str(runs["small"]), str(runs["large"]), "--out", str(tmp_path / "ens")]
    assert runner.invoke(app, args).exit_code == 0
    before = (tmp_path / "ens" / ckpt.BEST).read_bytes()
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "already holds a checkpoint" in refused.output
    assert (tmp_path / "ens" / ckpt.BEST).read_bytes() == before
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert ckpt.load(tmp_path / "ens").method.backbone.embedding_dim == 8 + 12


def test_the_subset_search_scores_the_full_ensemble_as_evaluate_does(runs, tmp_path):
    """scripts/ensemble_search.py re-does the prototype arithmetic on embedding columns: its score of the whole
    ensemble must be what `metaedge evaluate` gives on the same seeded episodes, enrollment views included."""
    path = combine([runs["small"], runs["large"]], tmp_path / "ens")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(repo / "scripts" / "ensemble_search.py"), str(path.parent), "--reference", "0,1",
         "--min-members", "1", "--enroll-views", "2", "--way", "5", "--episodes", "30", "--seed", "1"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(repo)},
    ).stdout  # fmt: skip
    expected = evaluate_checkpoint(path, enroll_views=2, way=5, shot=1, query=1, episodes=30, seed=1)
    assert f"reference (0, 1): {100 * expected.accuracy:.2f}%" in out
    rows = re.findall(r"^([0-9,]+) +[0-9.]+% ", out, flags=re.MULTILINE)
    assert sorted(rows) == ["0", "0,1", "1"]
