"""Classifier pre-training (Meta-Baseline stage 1): it learns, it is seeded, and a run records and resumes past it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import Interrupted, assert_same_last_weights, interrupt_after

from metaedge import checkpoint as ckpt
from metaedge.models import Conv4
from metaedge.pretrain import pretrain_classifier
from metaedge.schedule import cosine_lr
from metaedge.train import TrainConfig, train


def blobs(classes: int = 4, per_class: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (classes * per_class, 1, 28, 28): each class a bright square at its own place, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.rand(classes * per_class, 1, 28, 28, generator=gen)
    labels = torch.arange(classes).repeat_interleave(per_class)
    for c in range(classes):
        r, q = divmod(c, 2)
        images[labels == c, :, 4 + 12 * r : 12 + 12 * r, 4 + 12 * q : 12 + 12 * q] += 1.0
    return images, labels


def test_learns_to_classify_and_is_seeded():
    images, labels = blobs()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        backbone = Conv4(in_channels=1, width=8)
        history = pretrain_classifier(backbone, images, labels, epochs=6, batch=16, lr=1e-2, seed=3, augment=None)
        runs.append((history, backbone.state_dict()))
    history = runs[0][0]
    assert [h.epoch for h in history] == list(range(1, 7))
    assert history[-1].loss < 0.5 * history[0].loss and history[-1].accuracy > 0.9, history
    for k, v in runs[0][1].items():
        torch.testing.assert_close(v, runs[1][1][k], rtol=0, atol=0, msg=k)


def test_learning_rate_decays_to_one_percent():
    assert cosine_lr(1e-3, 0, 10) == pytest.approx(1e-3)
    assert cosine_lr(1e-3, 10, 10) == pytest.approx(1e-5)


@pytest.mark.slow
def test_run_pretrains_logs_epochs_and_resumes_exactly(omniglot_zips, tmp_path):
    def config(out) -> TrainConfig:
        return TrainConfig(
            data=[str(p) for p in omniglot_zips], out=str(out), way=10, shot=1, query=2, episodes=6, val_every=3,
            val_episodes=5, holdout_groups=2, val_groups=1, width=8, seed=0, rotations=False,
            pretrain_epochs=1, pretrain_batch=256,
        )  # fmt: skip

    epochs = []
    train(config(tmp_path / "full"), on_pretrain=epochs.append)
    assert [e.epoch for e in epochs] == [1]
    rows = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r.get("pretrain_epoch") for r in rows] == [1, None, None] and [r.get("episode") for r in rows[1:]] == [3, 6]
    assert ckpt.read_meta(tmp_path / "full" / ckpt.LAST)["train_config"]["pretrain_epochs"] == 1

    # Interrupted after the first checkpoint: resuming does not pre-train again and ends where the full run did.
    with pytest.raises(Interrupted):
        train(config(tmp_path / "half"), on_step=interrupt_after(3))
    again = []
    train(config(tmp_path / "half"), resume=True, on_pretrain=again.append)
    assert again == []
    assert_same_last_weights(tmp_path / "full", tmp_path / "half")


def test_refuses_a_negative_epoch_count(tmp_path):
    from metaedge.errors import DataError

    with pytest.raises(DataError, match="pretrain-epochs"):
        train(TrainConfig(data=[], out=str(tmp_path / "r"), pretrain_epochs=-1))
