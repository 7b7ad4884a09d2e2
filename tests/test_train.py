"""Meta-training end to end on real Omniglot: it learns, it checkpoints, it resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import Interrupted, assert_same_last_weights, interrupt_after

from metaedge import checkpoint as ckpt
from metaedge.evaluate import evaluate_checkpoint
from metaedge.train import TrainConfig, keep_init_weights, lr_at, train

pytestmark = pytest.mark.slow


def tiny(omniglot_zips, out, **kw) -> TrainConfig:
    base = dict(
        data=[str(p) for p in omniglot_zips], out=str(out), way=20, shot=1, query=5, episodes=120,
        holdout_groups=2, val_groups=1, val_every=60, val_episodes=50, width=32, seed=0,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_tiny_run_beats_chance_by_far_on_held_out_alphabets(omniglot_zips, tmp_path):
    result = train(tiny(omniglot_zips, tmp_path / "run"))
    assert (tmp_path / "run" / ckpt.BEST).is_file() and (tmp_path / "run" / ckpt.LAST).is_file()
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == [60, 120]
    meta = ckpt.load(tmp_path / "run").meta
    test_groups = meta["split"]["test"]
    assert not set(test_groups) & set(meta["split"]["train"]) and not set(test_groups) & set(meta["data"]["groups"])
    res = evaluate_checkpoint(tmp_path / "run", way=5, shot=1, query=5, episodes=200, seed=0)
    assert res.groups == sorted(test_groups)
    # chance is 20%; 120 episodes of a narrow Conv4 already reach well above 70% on unseen alphabets
    assert res.accuracy > 0.6, res
    assert result.best_val is not None and result.best_val.accuracy > 0.5


def test_resume_continues_exactly(omniglot_zips, tmp_path):
    full = tiny(omniglot_zips, tmp_path / "full", episodes=40, val_every=20, augment=True)
    train(full)
    half = tiny(omniglot_zips, tmp_path / "half", episodes=40, val_every=20, augment=True)

    # Stop after the first checkpoint, as an interrupted run would, then resume.
    with pytest.raises(Interrupted):
        train(half, on_step=interrupt_after(20))
    assert ckpt.read_meta(tmp_path / "half" / ckpt.LAST)["episode"] == 20
    train(half, resume=True)
    assert_same_last_weights(tmp_path / "full", tmp_path / "half")


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(omniglot_zips, tmp_path):
    from metaedge.errors import CheckpointError

    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(tiny(omniglot_zips, tmp_path / "empty"), resume=True)
    train(tiny(omniglot_zips, tmp_path / "r", episodes=2, val_every=2, val_episodes=2))
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(tiny(omniglot_zips, tmp_path / "r", episodes=2))


def test_bad_settings_touch_no_run_directory(omniglot_zips, tmp_path):
    from metaedge.errors import MetaedgeError

    with pytest.raises(MetaedgeError, match="unknown backbone"):
        train(tiny(omniglot_zips, tmp_path / "new", backbone="nope"))
    assert not (tmp_path / "new").exists()
    train(tiny(omniglot_zips, tmp_path / "r", episodes=2, val_every=2, val_episodes=2))
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    # --overwrite with a mistyped option must not have deleted the run it was about to replace.
    with pytest.raises(MetaedgeError, match="unknown backbone"):
        train(tiny(omniglot_zips, tmp_path / "r", backbone="nope"), overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before


def test_within_group_episodes_train_and_are_recorded(omniglot_zips, tmp_path):
    from metaedge.errors import DataError

    train(tiny(omniglot_zips, tmp_path / "wg", episodes=4, val_every=4, val_episodes=2, within_group=1.0))
    assert ckpt.read_meta(tmp_path / "wg" / ckpt.LAST)["train_config"]["within_group"] == 1.0
    with pytest.raises(DataError, match="within-group episodes"):
        train(tiny(omniglot_zips, tmp_path / "bad", episodes=2, within_group=1.5))


def test_a_split_seed_keeps_the_held_out_groups_of_another_seed(omniglot_zips, tmp_path):
    """Ensemble members need one split but their own initialisation and episodes: --split-seed decouples them."""
    config = dict(episodes=2, val_every=2, val_episodes=5, val_groups=0)
    seeds = {"seed0": {}, "seed1": {"seed": 1}, "seed1-split0": {"seed": 1, "split_seed": 0}}
    runs = {name: ckpt.load(train(tiny(omniglot_zips, tmp_path / name, **config, **kw)).run_dir)
            for name, kw in seeds.items()}  # fmt: skip
    split = {name: r.meta["split"]["test"] for name, r in runs.items()}
    assert split["seed1"] != split["seed0"]  # the trap: a plain new seed holds out other groups
    assert split["seed1-split0"] == split["seed0"]
    weights0 = runs["seed0"].method.state_dict()
    weights = runs["seed1-split0"].method.state_dict()
    assert any(not torch.equal(weights0[k], weights[k]) for k in weights0)  # its own initialisation


def test_learning_rate_schedule():
    cfg = TrainConfig(data=[], out="", lr=1e-3, episodes=100)
    assert lr_at(cfg, 0) == pytest.approx(1e-3)
    assert lr_at(cfg, 50) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert lr_at(cfg, 100) == pytest.approx(1e-5)


def test_easyfsl_options_change_the_training_loss_not_what_is_evaluated():
    """--loss-distance plain trains on -||q - p||, --embed-passes 2 normalises support and query apart (issue 17)."""
    from metaedge.methods.protonet import ProtoNet
    from metaedge.models import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_channels=1, width=8)
    nets = {(d, p): ProtoNet(backbone, loss_distance=d, passes=p) for d in ("squared", "plain") for p in (1, 2)}
    support, query, labels = torch.rand(5, 1, 28, 28), torch.rand(7, 1, 28, 28) + 0.5, torch.arange(5)
    for net in nets.values():
        net.train()
    with torch.no_grad():
        logits = {k: net.episode_logits(support, labels, query, 5) for k, net in nets.items()}
    torch.testing.assert_close(logits["plain", 1], -(-logits["squared", 1]).sqrt())
    # Training mode: batch norm normalises by the batch, so two passes (query brighter than support) differ.
    assert (logits["squared", 2] - logits["squared", 1]).abs().max() > 1e-2
    for net in nets.values():
        net.eval()  # running statistics: one pass or two embed every image alike
    with torch.no_grad():
        evaluated = {k: net.episode_logits(support, labels, query, 5) for k, net in nets.items()}
    torch.testing.assert_close(evaluated["squared", 2], evaluated["squared", 1])
    assert nets["plain", 2].config() == {"metric": "sqeuclidean", "init_scale": 10.0, "loss_distance": "plain",
                                         "passes": 2}  # fmt: skip
    assert nets["squared", 1].config() == {"metric": "sqeuclidean", "init_scale": 10.0}


def test_easyfsl_options_are_recorded_and_bad_ones_refused(omniglot_zips, tmp_path):
    from metaedge.errors import MetaedgeError

    train(tiny(omniglot_zips, tmp_path / "run", episodes=2, val_every=2, val_episodes=2, loss_distance="plain",
               embed_passes=2))  # fmt: skip
    loaded = ckpt.load(tmp_path / "run")
    assert loaded.meta["algorithm"]["config"] == {"metric": "sqeuclidean", "loss_distance": "plain", "passes": 2}
    assert (loaded.method.loss_distance, loaded.method.passes) == ("plain", 2)
    default = tiny(omniglot_zips, tmp_path / "default", episodes=2, val_every=2, val_episodes=2)
    train(default)
    assert ckpt.read_meta(tmp_path / "default" / ckpt.BEST)["algorithm"]["config"] == {"metric": "sqeuclidean"}
    for bad, match in (({"metric": "cosine", "loss_distance": "plain"}, "needs metric sqeuclidean"),
                       ({"embed_passes": 3}, "must be 1"), ({"loss_distance": "cubed"}, "unknown loss distance"),
                       ({"algorithm": "maml", "embed_passes": 2}, "ProtoNet's")):  # fmt: skip
        with pytest.raises(MetaedgeError, match=match):
            train(tiny(omniglot_zips, tmp_path / "bad", episodes=2, **bad))
        assert not (tmp_path / "bad").exists()


def test_the_init_weights_report_survives_a_resume():
    """A resumed run loads its own weights, not the file: the report of what it began from must carry over."""
    report = {"file": "mnv3.safetensors", "loaded": 10, "missing": [], "unexpected": []}
    started, resumed, plain = {}, {}, {}
    keep_init_weights(started, report, None)
    keep_init_weights(resumed, None, {"episode": 5, "init_weights": report})
    keep_init_weights(plain, None, {"episode": 5})
    assert started == resumed == {"init_weights": report} and plain == {}


def test_checkpoints_keep_the_best_validation_and_the_latest_state(tmp_path):
    """best.safetensors holds the weights of the best validation so far (not the latest); last.safetensors the
    latest weights, optimizer state and best score (what --resume reads); every step is one log row."""
    from dataclasses import dataclass

    from safetensors.torch import load_file

    from metaedge.methods.protonet import ProtoNet
    from metaedge.models import create_backbone
    from metaedge.train import Checkpoints

    @dataclass
    class Validation:
        accuracy: float

        def to_dict(self) -> dict:
            return {"accuracy": self.accuracy}

    method = ProtoNet(create_backbone("conv4", in_channels=1, width=8))
    first = next(iter(method.state_dict()))
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    with (tmp_path / "log.jsonl").open("a") as log:
        checkpoints = Checkpoints(tmp_path, method, optimizer, {"task": "classify"}, best=0.55, log=log)
        for done, accuracy in ((10, 0.5), (20, 0.7), (30, 0.6)):
            with torch.no_grad():  # each step's weights tell the steps apart
                method.state_dict()[first].fill_(done)
            checkpoints.record(done, {"episode": done, "seconds": float(done)}, Validation(accuracy), accuracy)
    best, last = ckpt.read_meta(tmp_path / ckpt.BEST), ckpt.read_meta(tmp_path / ckpt.LAST)
    assert best["episode"] == 20 and best["val"] == {"accuracy": 0.7} and best["best_val_accuracy"] == 0.7
    assert last["episode"] == 30 and last["best_val_accuracy"] == 0.7 and "optimizer_param_groups" in last
    assert float(load_file(tmp_path / ckpt.BEST)[first].flatten()[0]) == 20.0
    assert float(load_file(tmp_path / ckpt.LAST)[first].flatten()[0]) == 30.0
    assert checkpoints.best == 0.7 and checkpoints.best_result.accuracy == 0.7
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == [10, 20, 30] and checkpoints.history == rows
