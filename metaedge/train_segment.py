"""Meta-training of one-shot segmentation (`metaedge train --task segment`): cluttered scenes made on the fly.

Each episode is one scene with its target's K references (data/clutter.py), seeded by (seed, episode index),
so a resumed run draws exactly the scenes the uninterrupted run would have; `meta_batch` episodes make one
update, dealt to the ranks under torchrun as classification's tasks are. Validation is the mean IoU on a
fixed seeded scene set of the validation alphabets (never the test ones), over the training clutter levels,
half of it one-colour. Checkpoints, log and resume follow metaedge/train.py exactly.

`--pretrain-epochs N` first teaches the dense backbone to tell the training characters apart (`pretrain_glyphs`):
trained on scenes alone, from scratch, it learns where ink is long before it learns which character is which.
`--init-weights` starts the backbone from a weights file, as classification does.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from metaedge import checkpoint as ckpt
from metaedge import distributed
from metaedge.data import open_dataset, split_groups
from metaedge.data.clutter import REFERENCE_SIZE, ClutterEpisodes, Glyphs, glyph_batch
from metaedge.errors import CheckpointError, DataError
from metaedge.evaluate_segment import REFERENCE_SPEC, SCENE_SPEC, SegmentResult, evaluate_segment, scenes_to_tensors


def segment_defaults(config):
    """The segment task's architecture where `config` left the classification defaults (protonet, conv4, 28 px)."""
    changes = {}
    if config.algorithm == "protonet":
        changes["algorithm"] = "protoseg"
    if config.backbone == "conv4":
        changes["backbone"] = "fcn"
    if config.image_size == 28:
        changes["image_size"] = SCENE_SPEC.size
    config = dataclasses.replace(config, **changes)
    if config.algorithm != "protoseg":
        raise DataError(f"--task segment trains the protoseg method, not {config.algorithm!r}")
    if config.image_size != SCENE_SPEC.size:
        raise DataError(f"--task segment works on {SCENE_SPEC.size}x{SCENE_SPEC.size} scenes, not --image-size "
                        f"{config.image_size}")  # fmt: skip
    if not config.clutter or any(c < 1 for c in config.clutter):
        raise DataError(f"--clutter takes positive numbers of characters, not {config.clutter}")
    return config


def arch_meta(config) -> dict:
    return {
        "algorithm": {"name": "protoseg", "config": {"decoder": config.decoder}},
        "backbone": {"name": config.backbone, "kwargs": {"in_channels": SCENE_SPEC.channels, "width": config.width}},
    }


def train_segment(config, run_dir: Path, ranks, device, resume, overwrite, on_step, on_validate):
    """The body of metaedge.train.train for --task segment; returns its TrainResult."""
    from metaedge.train import Checkpoints, StepStats, TrainConfig, TrainResult, keep_init_weights, lr_at

    start_episode, best_iou, elapsed, state_meta = 0, -1.0, 0.0, None
    if resume:
        last = run_dir / ckpt.LAST
        if not last.is_file():
            raise CheckpointError(f"{last}: nothing to resume (no last checkpoint in {run_dir})")
        state_meta = ckpt.read_meta(last)
        stored = TrainConfig(**state_meta["train_config"])
        config = dataclasses.replace(stored, episodes=max(config.episodes, stored.episodes), device=config.device)
        start_episode, best_iou = state_meta["episode"], state_meta.get("best_val_accuracy", -1.0)
        elapsed = state_meta.get("train_seconds", 0.0)
    elif (run_dir / ckpt.LAST).exists() and not overwrite:
        raise CheckpointError(
            f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to start over, or another --out"
        )
    config = segment_defaults(config)

    # Data first: a bad root or split fails before the run directory is touched.
    dataset = open_dataset(config.data)
    split_seed = config.seed if config.split_seed is None else config.split_seed
    split = split_groups(dataset.groups(), config.holdout_groups, config.val_groups, split_seed)
    train_glyphs = Glyphs.from_dataset(dataset.subset(split.train))
    val_glyphs = Glyphs.from_dataset(dataset.subset(split.val)) if split.val else None
    episodes = ClutterEpisodes(train_glyphs, config.clutter, shot=config.shot, one_colour=config.one_colour,
                               seed=config.seed)  # fmt: skip

    torch.manual_seed(config.seed)
    method = ckpt.build_method(arch_meta(config))
    if ranks.main:
        if overwrite and state_meta is None:
            for name in (ckpt.LAST, ckpt.BEST, "log.jsonl"):
                (run_dir / name).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(ranks)
    method.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(method.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    init_report = None
    if state_meta is not None:
        resumed = ckpt.load(run_dir / ckpt.LAST, which=ckpt.LAST, map_location=device)
        method.load_state_dict(resumed.method.state_dict())
        ckpt.load_optimizer_state(run_dir / ckpt.LAST, optimizer, state_meta)
    elif config.init_weights:  # a resumed run has its own weights already
        from metaedge.weights import load_init_weights

        init_report = load_init_weights(method.backbone, config.init_weights).to_dict()

    meta = {
        **arch_meta(config),
        "task": "segment",
        "preprocess": SCENE_SPEC.to_dict(),
        "reference_preprocess": REFERENCE_SPEC.to_dict(),
        "segment": {"scene_size": SCENE_SPEC.size, "reference_size": REFERENCE_SIZE, "stride": method.stride,
                    "clutter": list(config.clutter), "one_colour": config.one_colour, "shot": config.shot},
        "split": split.to_dict(),
        "data": {"roots": [str(s.path) for s in dataset.sources], "groups": sorted(set(train_glyphs.class_groups)),
                 "classes": train_glyphs.num_classes, "images": len(train_glyphs.labels),
                 "all_groups": dataset.groups()},
        "seed": config.seed,
        "train_config": dataclasses.asdict(config),
        "versions": ckpt.versions(),
    }  # fmt: skip
    keep_init_weights(meta, init_report, state_meta)
    log = (run_dir / "log.jsonl").open("a") if ranks.main else None
    checkpoints = Checkpoints(run_dir, method, optimizer, meta, best_iou, log)
    t0 = time.perf_counter() - elapsed
    try:
        if start_episode == 0 and config.pretrain_epochs > 0:
            for row in pretrain_glyphs(method, train_glyphs, epochs=config.pretrain_epochs,
                                       batch=config.pretrain_batch, lr=config.lr, seed=config.seed,
                                       one_colour=config.one_colour, device=device, ranks=ranks):  # fmt: skip
                if log is not None:
                    log.write(json.dumps({**row, "seconds": time.perf_counter() - t0}) + "\n")
                    log.flush()
        for episode in range(start_episode, config.episodes):
            lr = lr_at(config, episode)
            loss, iou = _step(method, optimizer, episodes, config, episode, lr, device, ranks)
            stats = StepStats(episode=episode + 1, loss=loss, accuracy=iou, lr=lr)
            if on_step is not None and ranks.main:
                on_step(stats)
            done = episode + 1
            if done % config.val_every == 0 or done == config.episodes:
                distributed.average_buffers(method, ranks)
                if not ranks.main:
                    continue
                row = {"episode": done, "loss": loss, "train_iou": iou, "seconds": time.perf_counter() - t0}
                result = None
                if val_glyphs is not None:
                    result = validate(method, val_glyphs, config, device)
                    method.train()
                    row["val_iou"], row["val_ci95"] = result.iou, result.iou_ci95
                    if on_validate is not None:
                        on_validate(done, result)
                checkpoints.record(done, row, result, result.iou if result else None)
    finally:
        if log is not None:
            log.close()
    distributed.barrier(ranks)  # as in train.py: no rank leaves while rank 0 still writes
    return TrainResult(run_dir, config.episodes, time.perf_counter() - t0, checkpoints.best_result,
                       checkpoints.history, meta.get("init_weights"))  # fmt: skip


def pretrain_glyphs(method, glyphs: Glyphs, *, epochs: int, batch: int, lr: float, seed: int, one_colour: float,
                    device, ranks=distributed.Ranks()):  # fmt: skip
    """Stage 1: the backbone, through the method's masked pooling, classifies isolated warped characters of
    every training class (a cosine classifier, thrown away afterwards). Yields one log row per epoch.

    Each image is one drawing warped as a scene's characters are (scale included: a scene's characters are
    0.5-2x the reference's size), in a random colour (white with probability `one_colour`), at a random place
    on a 64x64 black canvas (data/clutter.py `glyph_batch`); batch `b` of epoch `e` is seeded by (seed, e, b).
    The embedding is the one prototypes are: masked average pooling of the dense map over the ink, so the
    features that learn to tell characters apart are the ones the cosine scoring of scenes compares.
    """
    from metaedge.schedule import cosine_lr

    backbone = method.backbone
    head = torch.nn.ParameterDict({
        "weight": torch.nn.Parameter(torch.randn(glyphs.num_classes, backbone.embedding_dim, device=device) * 0.01),
        "log_scale": torch.nn.Parameter(torch.tensor(float(np.log(10.0)), device=device)),
    })  # fmt: skip
    pair = torch.nn.ModuleList([backbone, head])
    optimizer = torch.optim.Adam(pair.parameters(), lr=lr)
    n = len(glyphs.labels)
    per_epoch = -(-n // batch)
    backbone.train()
    for epoch in range(epochs):
        order = np.random.default_rng([seed, 104_729, epoch]).permutation(n)
        total, correct = 0.0, 0
        for b in range(per_epoch):
            step = epoch * per_epoch + b
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(lr, step, epochs * per_epoch)
            whole = order[b * batch : (b + 1) * batch]
            index = whole[ranks.rank :: ranks.world]
            rng = np.random.default_rng([seed, 104_729, epoch, b, ranks.rank])
            images = torch.from_numpy(glyph_batch(glyphs, index, rng, one_colour=one_colour)).to(device)
            x = images.float().div_(255.0).contiguous(memory_format=torch.channels_last)
            labels = torch.from_numpy(glyphs.labels[index]).to(device)
            embedding = method.pool(backbone(x), x)
            logits = head["log_scale"].exp() * F.normalize(embedding, dim=1) @ F.normalize(head["weight"], dim=1).T
            # Summed over this rank's share, divided by the whole batch: the all-reduced gradient is the batch mean.
            loss = F.cross_entropy(logits, labels, reduction="sum") / len(whole)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.all_reduce_gradients(pair, ranks)
            optimizer.step()
            total += float(loss.detach()) * len(whole) / len(index)
            correct += int((logits.argmax(1) == labels).sum())
        yield {"pretrain_epoch": epoch + 1, "loss": total / per_epoch, "train_accuracy": correct / n,
               "lr": optimizer.param_groups[0]["lr"]}  # fmt: skip
    distributed.average_buffers(backbone, ranks)


def _step(method, optimizer, episodes: ClutterEpisodes, config, episode: int, lr: float, device, ranks):
    """One update on `meta_batch` scenes (this rank's share in one forward pass) -> (mean loss, mean IoU)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    method.train()
    optimizer.zero_grad(set_to_none=True)
    indices = [episode * config.meta_batch + task for task in range(ranks.rank, config.meta_batch, ranks.world)]
    batch = episodes.batch(indices)
    scenes, references = scenes_to_tensors(batch, device)
    masks = torch.from_numpy(batch.masks).to(device)
    loss, iou = method.episode_loss(scenes.contiguous(memory_format=torch.channels_last), masks, references)
    # Summed over this rank's scenes and divided by the whole meta-batch: the all-reduced gradient is the
    # meta-batch mean on any number of ranks.
    (loss.sum() / config.meta_batch).backward()
    distributed.all_reduce_gradients(method, ranks)
    optimizer.step()
    return float(loss.detach().mean()), float(iou.mean())


def validate(method, glyphs: Glyphs, config, device) -> SegmentResult:
    """Mean IoU over `val_episodes` fixed scenes of the validation groups: the training clutter levels in turn,
    each half coloured, half one-colour (a model that leans on colour is not the one to keep)."""
    levels = list(config.clutter)
    per = max(1, config.val_episodes // (2 * len(levels)))
    results = [evaluate_segment(method, glyphs, clutter=c, scenes=per, seed=config.seed, shot=config.shot,
                                one_colour=one, device=device) for c in levels for one in (False, True)]  # fmt: skip
    # Equal-sized independent sets: the pooled mean is the mean of theirs, its CI half-width sqrt(sum ci^2) / n.
    iou = float(np.mean([r.iou for r in results]))
    ci = float(np.sqrt(np.nansum([r.iou_ci95**2 for r in results])) / len(results))
    hits = float(np.mean([r.localisation for r in results]))
    hits_ci = float(np.sqrt(np.nansum([r.localisation_ci95**2 for r in results])) / len(results))
    return dataclasses.replace(results[0], iou=iou, iou_ci95=ci, localisation=hits, localisation_ci95=hits_ci,
                               clutter=0, one_colour=False, scenes=per * len(results))  # fmt: skip
