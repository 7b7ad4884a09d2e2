"""`metaedge train --task segment` and `metaedge evaluate --task segment` (metaedge/train_segment.py,
metaedge/evaluate_segment.py), on the real Omniglot files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import OMNIGLOT_ZIPS, Interrupted, assert_same_last_weights, interrupt_after
from typer.testing import CliRunner

from metaedge import checkpoint as ckpt
from metaedge.cli import app
from metaedge.errors import DataError
from metaedge.evaluate_segment import evaluate_segment_checkpoint
from metaedge.train import TrainConfig, train


def _config(out: Path, **changes) -> TrainConfig:
    settings = dict(data=[str(p) for p in OMNIGLOT_ZIPS], out=str(out), task="segment", width=4, episodes=4,
                    meta_batch=2, val_every=2, val_episodes=8, clutter=[4, 8], seed=3)  # fmt: skip
    return TrainConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    if not all(p.is_file() for p in OMNIGLOT_ZIPS):
        pytest.skip("the shared Omniglot data is not beside the checkout")
    out = tmp_path_factory.mktemp("seg") / "run"
    train(_config(out))
    return out


def test_run_writes_segment_checkpoints(seg_run):
    loaded = ckpt.load(seg_run)
    meta = loaded.meta
    assert meta["task"] == "segment" and meta["algorithm"]["name"] == "protoseg"
    assert meta["backbone"] == {"name": "fcn", "kwargs": {"in_channels": 3, "width": 4}}
    assert meta["segment"]["stride"] == 4 and meta["segment"]["clutter"] == [4, 8]
    # alphabets split as classification splits them: the test and validation ones never trained on
    split = meta["split"]
    assert split["test"] and split["val"]
    assert not set(meta["data"]["groups"]) & (set(split["test"]) | set(split["val"]))
    assert set(meta["data"]["groups"]) == set(split["train"])
    assert meta["val"]["groups"] == sorted(split["val"])  # checkpoints are picked on validation alphabets alone
    rows = [json.loads(line) for line in (seg_run / "log.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == [2, 4] and all(0.0 <= r["val_iou"] <= 1.0 for r in rows)
    assert ckpt.LAST in {p.name for p in seg_run.iterdir()}


def test_resume_is_exact(tmp_path):
    if not all(p.is_file() for p in OMNIGLOT_ZIPS):
        pytest.skip("the shared Omniglot data is not beside the checkout")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train(_config(whole))
    with pytest.raises(Interrupted):
        train(_config(broken), on_step=interrupt_after(2))
    # resumed without naming the task (the options' default is classify): the run's own task goes on
    train(_config(broken, task="classify"), resume=True)
    assert_same_last_weights(whole, broken)


def test_same_seed_same_weights_other_seed_other(tmp_path, seg_run):
    if not all(p.is_file() for p in OMNIGLOT_ZIPS):
        pytest.skip("the shared Omniglot data is not beside the checkout")
    train(_config(tmp_path / "again"))
    assert_same_last_weights(seg_run, tmp_path / "again")
    train(_config(tmp_path / "other", seed=4))
    with pytest.raises(AssertionError):
        assert_same_last_weights(seg_run, tmp_path / "other")


def test_bad_settings_fail_before_the_run_directory_exists(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DataError, match="protoseg"):
        train(_config(out, algorithm="maml"))
    with pytest.raises(DataError, match="96x96"):
        train(_config(out, image_size=64))
    with pytest.raises(DataError, match="unknown task"):
        train(_config(out, task="detect"))
    assert not out.exists()


def test_evaluate_per_level_and_colour(seg_run):
    results = evaluate_segment_checkpoint(seg_run, clutter=[4, 16], scenes=6, seed=1)
    assert [(r.clutter, r.one_colour) for r in results] == [(4, False), (4, True), (16, False), (16, True)]
    meta = ckpt.load(seg_run).meta
    assert all(r.groups == sorted(meta["split"]["test"]) for r in results)
    again = evaluate_segment_checkpoint(seg_run, clutter=[4], scenes=6, seed=1)
    assert again[0].iou == results[0].iou and again[1].localisation == results[1].localisation
    no_decoder = evaluate_segment_checkpoint(seg_run, clutter=[4], scenes=6, seed=1, use_decoder=False)
    assert not no_decoder[0].decoder and results[0].decoder


def test_cli_evaluate_segment(seg_run, tiny_run_dir):
    runner = CliRunner()
    ok = runner.invoke(app, ["evaluate", str(seg_run), "--task", "segment", "--clutter", "4", "--episodes", "4",
                             "--json"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    rows = json.loads(ok.stdout)
    assert [(r["clutter"], r["one_colour"], r["scenes"]) for r in rows] == [(4, False, 4), (4, True, 4)]
    bad = runner.invoke(app, ["evaluate", str(seg_run), "--task", "segment", "--clutter", "4,x"])
    assert bad.exit_code == 1 and "clutter levels" in bad.output
    wrong = runner.invoke(app, ["evaluate", str(tiny_run_dir), "--task", "segment", "--episodes", "2"])
    assert wrong.exit_code == 1 and "not a segmentation one" in wrong.output


def test_pretraining_teaches_the_backbone_first(tmp_path, seg_run):
    """--pretrain-epochs: the backbone classifies isolated characters before the first scene; the log says so,
    and the weights differ from the same run without it. A resumed run does not pre-train again."""
    if not all(p.is_file() for p in OMNIGLOT_ZIPS):
        pytest.skip("the shared Omniglot data is not beside the checkout")
    out = tmp_path / "pre"
    train(_config(out, pretrain_epochs=2, pretrain_batch=256))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    pre = [r for r in rows if "pretrain_epoch" in r]
    assert [r["pretrain_epoch"] for r in pre] == [1, 2] and all(0.0 <= r["train_accuracy"] <= 1.0 for r in pre)
    assert pre[1]["loss"] < pre[0]["loss"]
    assert [r["episode"] for r in rows if "episode" in r] == [2, 4]
    with pytest.raises(AssertionError):
        assert_same_last_weights(seg_run, out)
    train(_config(out, episodes=6), resume=True)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "pretrain_epoch" in r]) == 2


def test_init_weights_start_the_backbone(tmp_path, seg_run):
    """--init-weights loads the segment backbone from a file, as classification does, and the run records it."""
    from safetensors.torch import save_file

    backbone = ckpt.load(seg_run).method.backbone
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() + (0.5 if v.is_floating_point() else 0) for k, v in backbone.state_dict().items()},
              weights)  # fmt: skip
    out = tmp_path / "init"
    result = train(_config(out, episodes=2, val_every=2, lr=1e-9, init_weights=str(weights)))
    meta = ckpt.load(out).meta
    assert meta["init_weights"]["loaded"] == result.init_weights["loaded"] > 0
    assert meta["init_weights"]["missing"] == []
    loaded = ckpt.load(out).method.backbone.state_dict()
    first = next(k for k in loaded if k.endswith("weight"))
    assert torch.allclose(loaded[first], backbone.state_dict()[first] + 0.5, atol=1e-4)
