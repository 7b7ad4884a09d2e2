"""Episodic meta-training: sample tasks, learn across them, validate on held-out groups, keep the best checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from metaedge import checkpoint as ckpt
from metaedge.data import AffineAugment, EpisodeSampler, PreprocessSpec, apply_split, open_dataset, split_groups
from metaedge.errors import CheckpointError, DataError
from metaedge.evaluate import EvalResult, evaluate, to_tensor


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in every checkpoint so a run can be resumed or reproduced."""

    data: list[str]
    out: str
    algorithm: str = "protonet"
    metric: str = "sqeuclidean"
    backbone: str = "conv4"
    width: int = 64
    image_size: int = 28
    way: int = 60
    shot: int = 1
    query: int = 5
    episodes: int = 2000
    holdout_groups: int = 2
    val_groups: int = 1
    rotations: bool = True
    augment: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_every: int = 500
    val_episodes: int = 300
    val_way: int = 5
    val_shot: int = 1
    val_query: int = 5
    seed: int = 0
    device: str = "auto"
    preprocess: dict = field(default_factory=dict)

    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict({"size": self.image_size, **self.preprocess})


@dataclass
class StepStats:
    episode: int
    loss: float
    accuracy: float
    lr: float


@dataclass
class TrainResult:
    run_dir: Path
    episodes: int
    seconds: float
    best_val: EvalResult | None
    history: list[dict]


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"device {name!r} requested but torch sees no CUDA device")
    return name


def lr_at(config: TrainConfig, episode: int) -> float:
    """Cosine decay to 1% of the base rate: a pure function of the episode, so resuming needs no scheduler state."""
    progress = min(episode / max(config.episodes, 1), 1.0)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[StepStats], None] | None = None,
    on_validate: Callable[[int, EvalResult], None] | None = None,
) -> TrainResult:
    """Meta-train per `config`, writing `best.safetensors`, `last.safetensors` and `log.jsonl` into `config.out`."""
    run_dir = Path(config.out)
    device = pick_device(config.device)
    start_episode, best_acc, elapsed, state_meta = 0, -1.0, 0.0, None
    if resume:
        last = run_dir / ckpt.LAST
        if not last.is_file():
            raise CheckpointError(f"{last}: nothing to resume (no last checkpoint in {run_dir})")
        state_meta = ckpt.read_meta(last)
        stored = TrainConfig(**state_meta["train_config"])
        # Resuming may extend the run; everything else must be the run's own settings.
        config = dataclasses.replace(stored, episodes=max(config.episodes, stored.episodes), device=config.device)
        start_episode, best_acc = state_meta["episode"], state_meta.get("best_val_accuracy", -1.0)
        elapsed = state_meta.get("train_seconds", 0.0)
    elif overwrite:
        for name in (ckpt.LAST, ckpt.BEST, "log.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
    elif (run_dir / ckpt.LAST).exists():
        raise CheckpointError(
            f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to start over, or another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)

    spec = config.spec()
    dataset = open_dataset(config.data)
    split = split_groups(dataset.groups(), config.holdout_groups, config.val_groups, config.seed)
    train_set, val_set, _ = apply_split(dataset, split)
    if config.rotations:
        train_set = train_set.with_rotations()
    train_data = train_set.load(spec)
    val_data = val_set.load(spec) if val_set.classes else None

    torch.manual_seed(config.seed)
    method = ckpt.build_method(_arch_meta(config))
    # channels-last convolutions run about 1.4x faster in PyTorch's CPU backend (oneDNN) at these sizes.
    method.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(method.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if state_meta is not None:
        resumed = ckpt.load(run_dir / ckpt.LAST, which=ckpt.LAST, map_location=device)
        method.load_state_dict(resumed.method.state_dict())
        ckpt.load_optimizer_state(run_dir / ckpt.LAST, optimizer, state_meta)

    images = to_tensor(train_data.pixels, spec, device).contiguous(memory_format=torch.channels_last)
    sampler = EpisodeSampler(
        train_data.labels, train_data.class_groups, config.way, config.shot, config.query, seed=config.seed
    )
    augment = AffineAugment() if config.augment else None
    meta = {
        **_arch_meta(config),
        "preprocess": spec.to_dict(),
        "split": split.to_dict(),
        "data": {**train_set.summary(), "all_groups": dataset.groups()},
        "seed": config.seed,
        "train_config": dataclasses.asdict(config),
        "versions": ckpt.versions(),
    }
    history: list[dict] = []
    log = (run_dir / "log.jsonl").open("a")
    best_val: EvalResult | None = None
    t0 = time.perf_counter() - elapsed
    episode = start_episode
    try:
        for episode in range(start_episode, config.episodes):
            stats = _train_step(method, optimizer, sampler, images, config, episode, augment, device)
            if on_step is not None:
                on_step(stats)
            done = episode + 1
            if done % config.val_every == 0 or done == config.episodes:
                row = {"episode": done, "loss": stats.loss, "train_accuracy": stats.accuracy,
                       "seconds": time.perf_counter() - t0}  # fmt: skip
                step_meta = {**meta, "episode": done, "train_seconds": row["seconds"]}
                if val_data is not None:
                    result = evaluate(
                        method, val_data, way=min(config.val_way, val_data.num_classes), shot=config.val_shot,
                        query=config.val_query, episodes=config.val_episodes, seed=config.seed, device=device,
                    )  # fmt: skip
                    method.train()
                    row["val_accuracy"], row["val_ci95"] = result.accuracy, result.ci95
                    if on_validate is not None:
                        on_validate(done, result)
                    if result.accuracy > best_acc:
                        best_acc, best_val = result.accuracy, result
                        step_meta["val"] = result.to_dict()
                        ckpt.save(run_dir / ckpt.BEST, method, {**step_meta, "best_val_accuracy": best_acc})
                else:
                    # Nothing to select on: the best checkpoint is simply the latest.
                    ckpt.save(run_dir / ckpt.BEST, method, step_meta)
                ckpt.save(run_dir / ckpt.LAST, method, {**step_meta, "best_val_accuracy": best_acc}, optimizer)
                history.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
    finally:
        log.close()
    return TrainResult(run_dir, config.episodes, time.perf_counter() - t0, best_val, history)


def _arch_meta(config: TrainConfig) -> dict:
    return {
        "algorithm": {"name": config.algorithm, "config": {"metric": config.metric}},
        "backbone": {"name": config.backbone, "kwargs": {"in_channels": config.spec().channels, "width": config.width}},
    }


def _train_step(method, optimizer, sampler, images, config, episode, augment, device) -> StepStats:
    ep = sampler.episode(episode)
    lr = lr_at(config, episode)
    for group in optimizer.param_groups:
        group["lr"] = lr
    x = images[torch.from_numpy(np.concatenate([ep.support, ep.query]))]
    if augment is not None:
        # Seeded per episode: a resumed run draws exactly the warps the uninterrupted run would have.
        gen = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + episode)
        x = augment(x, gen)
    ns = len(ep.support)
    support_labels = torch.from_numpy(ep.support_labels).to(device)
    query_labels = torch.from_numpy(ep.query_labels).to(device)
    method.train()
    logits = method.episode_logits(x[:ns], support_labels, x[ns:], config.way)
    loss = F.cross_entropy(logits, query_labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    accuracy = (logits.argmax(1) == query_labels).float().mean().item()
    return StepStats(episode=episode + 1, loss=loss.item(), accuracy=accuracy, lr=lr)
