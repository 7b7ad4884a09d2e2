"""The command line: train and evaluate through `metaedge`, JSON output, clear errors and exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from metaedge.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("metaedge ")


@pytest.mark.slow
def test_train_then_evaluate_json(omniglot_zips, tmp_path):
    data = [arg for p in omniglot_zips for arg in ("--data", str(p))]
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", *data, "--out", str(out), "--way", "10", "--query", "3", "--episodes", "20",
                                 "--width", "16", "--val-every", "10", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 20 and summary["best_val"]["episodes"] == 300
    args = ["evaluate", str(out), "--way", "5", "--shot", "1", "--query", "1", "--episodes", "30", "--json"]
    first = json.loads(runner.invoke(app, args).stdout)
    second = json.loads(runner.invoke(app, args).stdout)
    assert first == second  # same seed, same numbers
    assert {"accuracy", "ci95", "episodes", "way", "shot"} <= set(first)
    assert first["episodes"] == 30 and first["way"] == 5 and 0 <= first["accuracy"] <= 1
    # within-alphabet, disjoint-drawer protocol on a named group
    res = runner.invoke(app, args + ["--within-group", "--disjoint-drawers", "--groups", "Korean"])
    assert res.exit_code == 0 and json.loads(res.stdout)["groups"] == ["Korean"]


def test_errors_are_one_line_and_non_zero(tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "no such checkpoint" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "missing.zip: no such file or folder" in result.stderr


def test_export_list_targets_json():
    result = runner.invoke(app, ["export", "--list-targets", "--json"])
    assert result.exit_code == 0
    targets = json.loads(result.stdout)
    assert targets["jetson-orin-nano"]["cuda_architectures"] == ["87"]


def test_export_errors_exit_non_zero(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path / "none"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "no such checkpoint" in result.stderr
    result = runner.invoke(app, ["export", "--target", "nope", str(tmp_path), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "unknown target 'nope'" in result.stderr
