"""The command line: train and evaluate through `metaedge`, JSON output, clear errors and exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

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


def _whole_names(text: str) -> set[str]:
    """The target names that `metaedge export --list-targets` printed whole, each a word of its own."""
    from metaedge.targets import list_targets

    return {n for n in list_targets() if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)}


def test_export_list_targets_keeps_names_whole_in_a_pipe():
    from metaedge.targets import list_targets

    result = runner.invoke(app, ["export", "--list-targets"])  # not a terminal: rich lays it out at 80 columns
    assert result.exit_code == 0
    assert _whole_names(result.stdout) == set(list_targets()) and "…" not in result.stdout


@pytest.mark.slow
def test_export_list_targets_keeps_names_whole_at_80_columns():
    import os
    import subprocess
    import sys

    from metaedge.targets import list_targets

    env = {**os.environ, "COLUMNS": "80", "TTY_COMPATIBLE": "1"}  # rich lays it out as for an 80-column terminal
    done = subprocess.run([sys.executable, "-m", "metaedge", "export", "--list-targets"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)  # a terminal gets bold and dim
    assert _whole_names(text) == set(list_targets()) and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


def _commands(command, path=()):
    """Every (argv, click command) of the CLI, groups included."""
    yield list(path), command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_help_shows_no_type_for_flags():
    import typer.main

    root = typer.main.get_command(app)
    seen = 0
    for argv, _command in _commands(root):
        result = runner.invoke(app, [*argv, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, argv
        assert "<bool>" not in result.stdout, argv
        assert "--no-no-" not in result.stdout, argv
        seen += 1
    assert seen >= 10
    top = runner.invoke(app, ["--help"]).stdout
    assert any(line.split()[1:3] == ["--version", "Print"] for line in top.splitlines() if "--version" in line)
    assert "<int>" in runner.invoke(app, ["classify", "--help"]).stdout  # options that take a value keep theirs


def test_export_help_gives_the_calibration_sample_the_exporter_uses():
    # The CLI does not import numpy (start-up time), so its help states the number; this keeps the two equal.
    from metaedge.quantize import CALIBRATION_IMAGES

    text = " ".join(runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200"}).stdout.split())
    assert f"default: {CALIBRATION_IMAGES} of the training images" in text
    assert f"how many calibration images to sample; default {CALIBRATION_IMAGES}." in text


def test_commands_without_a_gallery_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("METAEDGE_STORE", str(tmp_path / "none.db"))
    image = tmp_path / "a.png"
    image.write_bytes(b"not read: the gallery is missing first")
    for argv in (["classify", str(image)], ["gallery", "list"], ["gallery", "remove", "x"],
                 ["gallery", "rename", "x", "y"], ["gallery", "export", str(tmp_path / "out.json")]):  # fmt: skip
        result = runner.invoke(app, argv)
        assert result.exit_code == 1, argv
        assert "metaedge enroll LABEL IMAGES" in result.stderr and "--store" in result.stderr, argv
        assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == [image]  # nothing created


def test_gallery_import_makes_a_missing_gallery(tmp_path):
    from metaedge.runtime import REFERENCE_BUNDLE

    samples = sorted((REFERENCE_BUNDLE.parent / "samples" / "Korean").rglob("*.png"))[:2]
    source, fresh = tmp_path / "a.db", tmp_path / "sub" / "b.db"
    assert runner.invoke(app, ["enroll", "ga", *map(str, samples), "--store", str(source)]).exit_code == 0
    assert runner.invoke(app, ["gallery", "export", str(tmp_path / "g.json"), "--store", str(source)]).exit_code == 0
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    result = runner.invoke(app, ["gallery", "import", str(bad), "--store", str(fresh)])
    assert result.exit_code == 1 and "bad.json" in result.stderr
    assert not list(fresh.parent.glob("b.db*"))  # a failed first import leaves no gallery behind
    result = runner.invoke(app, ["gallery", "import", str(tmp_path / "g.json"), "--store", str(fresh)])
    assert result.exit_code == 0, result.output
    listed = runner.invoke(app, ["gallery", "list", "--store", str(fresh), "--json"])
    assert [r["label"] for r in json.loads(listed.stdout)] == ["ga"]


def test_training_error_prints_no_progress_bar(tmp_path):
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "missing.zip" in result.stderr
    assert "ep/s" not in result.output and "0/2000" not in result.output


def test_labels_are_text_not_markup(tmp_path):
    from metaedge.runtime import REFERENCE_BUNDLE

    samples = sorted((REFERENCE_BUNDLE.parent / "samples" / "Korean").rglob("*.png"))[:2]
    store = ["--store", str(tmp_path / "g.db")]
    result = runner.invoke(app, ["enroll", "a[/]b", *map(str, samples), *store])  # rich read "[/]" as a tag
    assert result.exit_code == 0, result.output
    assert "'a[/]b'" in result.stdout
    assert runner.invoke(app, ["gallery", "list", *store]).stdout.splitlines()[0].split() == ["a[/]b", "2", "image(s)"]
    result = runner.invoke(app, ["classify", str(samples[0]), "--no-threshold", *store])
    assert result.exit_code == 0 and result.stdout.startswith(f"{samples[0]}: a[/]b (")
    assert len(result.stdout.splitlines()) == 1  # one line per image, however long the path


def test_profile_table_keeps_every_figure_at_80_columns():
    import io

    from rich.console import Console

    from metaedge.profiling.table import ms, print_profile

    doc = json.loads((Path(__file__).resolve().parents[1] / "docs" / "profile" / "profile.json").read_text())
    out = io.StringIO()
    print_profile(doc, Console(file=out, width=80, force_terminal=True, color_system=None))
    text = out.getvalue()
    assert "…" not in text  # rich used to elide them to "0…" to fit the width
    assert all(ms(f["p50_ms"]) in text for f in doc["figures"])
