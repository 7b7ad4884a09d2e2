"""scripts/paired_compare.py's model syntax: bundles side by side (A+B), each with its own test-time views (@N)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paired_compare.py"


def load_script():
    spec = importlib.util.spec_from_file_location("paired_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_plus_in_a_bundle_name_is_no_separator(tmp_path, monkeypatch):
    # scripts/distill_ensemble.sh names its bundles after their loss: bundle-kl+relational. Split on every '+',
    # that one bundle was two paths, neither a bundle, and the script failed after an hour of training.
    split_parts = load_script().split_parts
    for name in ("bundle-kl+relational", "ensemble", "bundle"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    assert split_parts("bundle-kl+relational") == ["bundle-kl+relational"]
    assert split_parts("ensemble+bundle@3") == ["ensemble", "bundle@3"]
    assert split_parts("bundle-kl+relational@3+ensemble") == ["bundle-kl+relational@3", "ensemble"]
    assert split_parts("ensemble+bundle-kl+relational") == ["ensemble", "bundle-kl+relational"]
    # Names that exist nowhere split as they are written, for bundle_io.load to say which one is missing.
    assert split_parts("missing+other") == ["missing", "other"]
