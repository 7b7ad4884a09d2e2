"""`metaedge enroll | classify | gallery | demo` through the command line, with a real gallery file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metaedge.cli import app

SAMPLES = Path(__file__).resolve().parents[1] / "metaedge" / "reference" / "samples" / "Korean"
runner = CliRunner()
pytestmark = pytest.mark.slow


def images(n: int, drawers: slice) -> list[str]:
    return [str(p) for p in sorted((SAMPLES / f"character{n:02d}").glob("*.png"))[drawers]]


def test_enroll_classify_and_manage_the_gallery(tiny_bundle, tmp_path):
    common = ["--bundle", str(tiny_bundle), "--store", str(tmp_path / "g.db")]
    for n in (1, 2, 3):
        result = runner.invoke(app, ["enroll", f"c{n}", *images(n, slice(0, 5)), *common])
        assert result.exit_code == 0, result.output
        assert f"enrolled 'c{n}': 5 image(s)" in result.stdout and "backbone" in result.stdout
    result = runner.invoke(app, ["classify", *images(2, slice(10, 12)), *common, "--top-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["image"] for r in rows] == images(2, slice(10, 12))
    assert all({"image", "label", "score", "top_k"} <= set(r) and len(r["top_k"]) == 2 for r in rows)
    result = runner.invoke(app, ["classify", images(2, slice(10, 11))[0], *common, "--threshold", "1.5", "--json"])
    assert json.loads(result.stdout)[0]["label"] is None

    listed = json.loads(runner.invoke(app, ["gallery", "list", *common, "--json"]).stdout)
    assert [(r["label"], r["count"]) for r in listed] == [("c1", 5), ("c2", 5), ("c3", 5)]
    assert runner.invoke(app, ["gallery", "rename", "c1", "first", *common]).exit_code == 0
    assert runner.invoke(app, ["gallery", "remove", "c3", *common]).exit_code == 0
    assert runner.invoke(app, ["gallery", "export", str(tmp_path / "g.json"), *common]).exit_code == 0
    fresh = ["--bundle", str(tiny_bundle), "--store", str(tmp_path / "fresh.db")]
    assert runner.invoke(app, ["enroll", "seed", *images(9, slice(0, 1)), *fresh]).exit_code == 0
    assert runner.invoke(app, ["gallery", "import", str(tmp_path / "g.json"), *fresh]).exit_code == 0
    listed = json.loads(runner.invoke(app, ["gallery", "list", *fresh, "--json"]).stdout)
    assert [r["label"] for r in listed] == ["c2", "first", "seed"]


def test_cli_errors_are_one_line_and_non_zero(tiny_bundle, tmp_path):
    common = ["--bundle", str(tiny_bundle), "--store", str(tmp_path / "g.db")]
    (tmp_path / "fake.png").write_text("not an image")
    cases = [
        (["enroll", "x", str(tmp_path / "fake.png"), *common], "fake.png: not a readable image"),
        (["enroll", "  ", *images(1, slice(0, 1)), *common], "label"),
        (["gallery", "remove", "ghost", *common], "no class named 'ghost'"),
        (["classify", *images(1, slice(0, 1)), "--bundle", str(tiny_bundle), "--store", str(tmp_path / "no.db")],
         "no.db"),
        (["enroll", "x", *images(1, slice(0, 1)), "--bundle", str(tmp_path), "--store", str(tmp_path / "g.db")],
         "not a bundle"),
    ]  # fmt: skip
    runner.invoke(app, ["enroll", "c1", *images(1, slice(0, 2)), *common])
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.stderr and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) <= 2  # one message (rich may wrap a long path)


def test_demo_on_the_reference_bundle():
    result = runner.invoke(app, ["demo", "--shots", "5", "--way", "20", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["alphabet"] == "Korean" and r["way"] == 20 and r["queries"] == 20 * 15
    assert r["accuracy"] > 0.85  # the reference model on an alphabet it never saw; chance is 5%
    # The demo classifies with the bundle's 5-shot threshold, calibrated to turn away 5% of genuine queries:
    # some drawings are answered "unknown" (none would be, were the threshold ignored), far from all.
    assert 0 < r["unknown"] <= 0.15 * r["queries"]
    assert 0 < r["classify_ms_per_image"]["p50"] < 1000
