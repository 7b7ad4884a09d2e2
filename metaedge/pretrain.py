"""Classifier pre-training before meta-training (Meta-Baseline, Chen et al. 2021, stage 1): the backbone learns
to tell every training class apart in plain mini-batches; a linear head on top is thrown away afterwards."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metaedge import distributed
from metaedge.data import AffineAugment
from metaedge.schedule import cosine_lr


@dataclass
class PretrainStats:
    epoch: int
    loss: float
    accuracy: float
    lr: float


def pretrain_classifier(
    backbone: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch: int,
    lr: float,
    seed: int,
    augment: AffineAugment | None,
    ranks: distributed.Ranks = distributed.Ranks(),
    on_epoch: Callable[[PretrainStats], None] | None = None,
) -> list[PretrainStats]:
    """Train `backbone` with a fresh linear head to classify `images` by `labels`; returns one row per epoch.

    images: float tensor (N, C, H, W) on the training device; labels: int64 tensor (N,) in [0, num_classes).
    Every random draw (the order of each epoch, each batch's warps) is seeded from (seed, epoch, batch), so two
    runs of one config pre-train identically. Under torchrun each rank takes every world-th image of a batch
    and the gradients are summed: the one-process update, except that batch norm sees each rank's share
    (as in any data-parallel training without synchronised batch norm).
    """
    device = images.device
    num_classes = int(labels.max()) + 1
    # Seeded apart from the backbone's initialisation, so adding pre-training leaves that initialisation as it was.
    head = nn.Linear(backbone.embedding_dim, num_classes).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 7919 + 1)
        head.reset_parameters()
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    pair = nn.ModuleList([backbone, head])
    n = images.shape[0]
    per_epoch = math.ceil(n / batch)
    history: list[PretrainStats] = []
    backbone.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        total_loss, correct, seen = 0.0, 0, 0
        for b in range(per_epoch):
            step = epoch * per_epoch + b
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(lr, step, epochs * per_epoch)  # over all pre-training steps
            index = order[b * batch : (b + 1) * batch].to(device)
            x, y = images[index], labels[index]
            if augment is not None:
                gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + 7_777_777 + step)
                x = augment(x, gen)  # warp the whole batch, then take this rank's share: same warps at any world
            x, y = x[ranks.rank :: ranks.world], y[ranks.rank :: ranks.world]
            optimizer.zero_grad(set_to_none=True)
            logits = head(backbone(x))
            loss = F.cross_entropy(logits, y, reduction="sum") / len(index)
            loss.backward()
            distributed.all_reduce_gradients(pair, ranks)
            optimizer.step()
            total_loss += loss.item() * len(index) / len(y)  # this rank's mean loss, whatever the world size
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        stats = PretrainStats(
            epoch + 1, total_loss / per_epoch, correct / max(seen, 1), optimizer.param_groups[0]["lr"]
        )
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    distributed.average_buffers(backbone, ranks)
    return history
