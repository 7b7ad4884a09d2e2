"""Episodic meta-training: sample tasks, learn across them, validate on held-out groups, keep the best checkpoint."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from metaedge import checkpoint as ckpt
from metaedge import distributed
from metaedge.data import (
    AffineAugment,
    EpisodeMix,
    EpisodeSampler,
    PreprocessSpec,
    apply_split,
    open_dataset,
    split_groups,
)
from metaedge.data.strokes import StrokeIndex
from metaedge.errors import CheckpointError, DataError
from metaedge.evaluate import EvalResult, evaluate, to_tensor
from metaedge.pretrain import PretrainStats, pretrain_classifier
from metaedge.schedule import cosine_lr
from metaedge.weights import load_init_weights


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in every checkpoint so a run can be resumed or reproduced."""

    data: list[str]
    out: str
    algorithm: str = "protonet"
    metric: str = "sqeuclidean"
    loss_distance: str = "squared"  # protonet: "plain" trains on the unsquared distance (methods/protonet.py)
    embed_passes: int = 1  # protonet: 2 embeds support and query in separate passes (own batch-norm statistics)
    backbone: str = "conv4"
    width: int = 64
    depth: int = 4
    activation: str = "leaky"  # resnet12: "relu" instead of LeakyReLU(0.1) (models/resnet12.py)
    image_size: int = 28
    way: int = 60
    shot: int = 1
    query: int = 5
    within_group: float = 0.0
    episodes: int = 2000
    pretrain_epochs: int = 0
    pretrain_batch: int = 128
    holdout_groups: int = 2
    val_groups: int = 1
    rotations: bool = True
    flips: bool = False
    augment: bool = True
    elastic: float = 0.0
    strokes: list[str] = field(default_factory=list)
    stroke_variants: int = 0
    lr: float = 1e-3
    meta_batch: int | None = None  # tasks per meta-update; None: one per rank (1 in a plain run), see for_ranks
    inner_steps: int | None = None
    inner_lr: float | None = None
    weight_decay: float = 0.0
    val_every: int = 500
    val_episodes: int = 300
    val_way: int = 5
    val_shot: int = 1
    val_query: int = 5
    val_within_group: bool = False
    seed: int = 0
    split_seed: int | None = None  # seed of the group split alone; None: `seed`
    # "classify", or "segment": one-shot segmentation of cluttered scenes (metaedge/train_segment.py), whose
    # scenes hold a number of characters drawn from `clutter`, one-colour with probability `one_colour`.
    task: str = "classify"
    clutter: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    one_colour: float = 0.5
    decoder: bool = True
    device: str = "auto"
    preprocess: dict = field(default_factory=dict)
    init_weights: str | None = None  # backbone weights to start from (metaedge/weights.py); None: random
    # Distillation (metaedge/distill.py): a run folder or bundle whose embedding geometry the student learns too,
    # or a list of them, which teach side by side.
    teacher: str | list[str] | None = None
    distill: str = "kl"
    distill_weight: float = 1.0
    distill_temperature: float = 4.0

    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict({"size": self.image_size, **self.preprocess})

    def teachers(self) -> list[str]:
        """The teacher sources, in order; [] without one."""
        if not self.teacher:
            return []
        return [self.teacher] if isinstance(self.teacher, str) else list(self.teacher)


@dataclass
class StepStats:
    episode: int
    loss: float
    accuracy: float
    lr: float
    distill_loss: float | None = None  # the distillation part of `loss`, where a teacher teaches


@dataclass
class TrainResult:
    run_dir: Path
    episodes: int
    seconds: float
    best_val: EvalResult | None
    history: list[dict]
    init_weights: dict | None = None  # what --init-weights loaded: file, sha256, missing and unexpected keys


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"device {name!r} requested but torch sees no CUDA device")
    return name


def lr_at(config: TrainConfig, episode: int) -> float:
    """The episodic rate: cosine decay to 1% over the run's episodes (metaedge/schedule.py)."""
    return cosine_lr(config.lr, episode, config.episodes)


def for_ranks(config: TrainConfig, world: int) -> TrainConfig:
    """`config` as `world` ranks run it: an unset meta_batch becomes one task per rank, and the batches that
    the ranks share are checked to go round. Raises DataError naming the option to pass."""
    if config.meta_batch is None:
        config = dataclasses.replace(config, meta_batch=world)
    if config.pretrain_epochs < 0 or config.pretrain_batch < 1:
        raise DataError(f"--pretrain-epochs must be >= 0 and --pretrain-batch >= 1, not {config.pretrain_epochs} "
                        f"and {config.pretrain_batch}")  # fmt: skip
    if config.pretrain_epochs and config.pretrain_batch < world:
        raise DataError(f"--pretrain-batch {config.pretrain_batch} is smaller than the {world} ranks sharing it: "
                        f"pass --pretrain-batch {world} or more")  # fmt: skip
    if config.meta_batch < world:
        raise DataError(f"--meta-batch {config.meta_batch} is smaller than the {world} ranks sharing it: pass "
                        f"--meta-batch {world} or more, or leave it out for one task per rank")  # fmt: skip
    return config


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[StepStats], None] | None = None,
    on_validate: Callable[[int, EvalResult], None] | None = None,
    on_pretrain: Callable[[PretrainStats], None] | None = None,
) -> TrainResult:
    """Meta-train per `config`, writing `best.safetensors`, `last.safetensors` and `log.jsonl` into `config.out`.

    With `config.pretrain_epochs`, a fresh run first pre-trains the backbone as a classifier of all training
    classes (metaedge/pretrain.py); a resumed run is past that stage and goes straight on with its episodes.
    """
    run_dir = Path(config.out)
    config = for_ranks(config, distributed.world_size())  # before joining: a bad setting leaves no process group
    ranks, device = distributed.setup(pick_device(config.device))
    try:
        task = config.task
        if resume and (run_dir / ckpt.LAST).is_file():  # a resumed run is of its own task, whatever the options say
            task = ckpt.read_meta(run_dir / ckpt.LAST)["train_config"].get("task", "classify")
        if task == "segment":  # the task picks its episodes, method and validation
            from metaedge.train_segment import train_segment

            return train_segment(config, run_dir, ranks, device, resume, overwrite, on_step, on_validate)
        if task != "classify":
            raise DataError(f"unknown task {task!r}; choose classify or segment")
        return _train(config, run_dir, ranks, device, resume, overwrite, on_step, on_validate, on_pretrain)
    finally:
        distributed.cleanup(ranks)


def _train(config, run_dir, ranks, device, resume, overwrite, on_step, on_validate, on_pretrain) -> TrainResult:
    start_episode, best_acc, elapsed, state_meta = 0, -1.0, 0.0, None
    if resume:
        last = run_dir / ckpt.LAST
        if not last.is_file():
            raise CheckpointError(f"{last}: nothing to resume (no last checkpoint in {run_dir}); "
                                  "leave out --resume to start the run")  # fmt: skip
        state_meta = ckpt.read_meta(last)
        stored = TrainConfig(**state_meta["train_config"])
        if config.teacher is not None and stored.teacher is None:
            raise CheckpointError(f"{run_dir} was trained without a teacher; resume it without --teacher, or start "
                                  "a new run to distil")  # fmt: skip
        asked_teacher = config.teachers() or None  # checked against the run's own below, once loaded
        # Resuming may extend the run; everything else must be the run's own settings.
        config = dataclasses.replace(stored, episodes=max(config.episodes, stored.episodes), device=config.device)
        start_episode, best_acc = state_meta["episode"], state_meta.get("best_val_accuracy", -1.0)
        elapsed = state_meta.get("train_seconds", 0.0)
    elif (run_dir / ckpt.LAST).exists() and not overwrite:
        raise CheckpointError(
            f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to start over, or another --out"
        )

    # Everything that can fail on bad data or settings happens before the run directory is touched, so a
    # mistyped option neither leaves an empty run behind nor lets --overwrite delete the run it would replace.
    if config.algorithm != "protonet" and (config.teacher or config.loss_distance != "squared"
                                           or config.embed_passes != 1):  # fmt: skip
        raise DataError(f"--teacher, --loss-distance and --embed-passes are ProtoNet's; not for {config.algorithm}")
    spec = config.spec()
    dataset = open_dataset(config.data)
    # A separate split seed lets runs differ in initialisation and episodes yet hold out the same groups,
    # which ensemble members must (metaedge/ensemble.py refuses members that saw each other's test groups).
    split_seed = config.seed if config.split_seed is None else config.split_seed
    # Groups, or the classes of a single-group (class/image) dataset such as CIFAR's.
    split = split_groups(dataset.split_units(), config.holdout_groups, config.val_groups, split_seed)
    train_set, val_set, _ = apply_split(dataset, split)
    teachers = None  # teachers are checked before any image is decoded: a wrong one fails at once
    if config.teacher:
        from metaedge.distill import Distiller, check_same_teacher, check_teacher, combine_teachers, load_teacher

        teachers = [load_teacher(source, device) for source in config.teachers()]
        for teacher in teachers:
            check_teacher(teacher, spec, split.test)
        if state_meta is not None:
            check_same_teacher(state_meta["teacher"], teachers)  # the run's teachers, unchanged since it started
            if asked_teacher is not None:
                asked = [load_teacher(source, device) for source in asked_teacher]
                check_same_teacher(state_meta["teacher"], asked)
    unrotated = train_set
    if config.rotations:
        train_set = train_set.with_rotations(flips=config.flips)
    strokes = StrokeIndex(config.strokes) if config.strokes and config.stroke_variants > 0 else None
    train_data = train_set.load(spec, strokes, config.stroke_variants, config.seed)
    val_data = val_set.load(spec) if val_set.classes else None
    distiller, teacher_pixels = None, {}
    if teachers is not None:
        recorded = (state_meta or {}).get("teacher", {}).get("weights")
        team = combine_teachers(teachers, _weighing_images(teachers, unrotated, recorded, device), recorded)
        distiller = Distiller(team, config.distill, config.distill_weight, config.distill_temperature)
        for teacher_spec in team.specs:
            if teacher_spec == spec:
                continue
            # The same images, decoded as the teacher was trained to see them.
            pixels = train_set.load(teacher_spec, strokes, config.stroke_variants, config.seed)
            if not np.array_equal(pixels.labels, train_data.labels):
                raise DataError("the teacher's and the student's decodings of the training images differ in order")
            teacher_pixels[teacher_spec] = pixels

    torch.manual_seed(config.seed)
    method = ckpt.build_method(_arch_meta(config))
    init_report = None
    if config.init_weights and state_meta is None:  # a resumed run has its own weights already
        init_report = load_init_weights(method.backbone, config.init_weights).to_dict()
    if ranks.main:
        if overwrite and state_meta is None:
            for name in (ckpt.LAST, ckpt.BEST, "log.jsonl"):
                (run_dir / name).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(ranks)  # rank 0 has cleared or created the run directory
    # channels-last convolutions run about 1.4x faster in PyTorch's CPU backend (oneDNN) at these sizes.
    method.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(method.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if state_meta is not None:
        resumed = ckpt.load(run_dir / ckpt.LAST, which=ckpt.LAST, map_location=device)
        method.load_state_dict(resumed.method.state_dict())
        ckpt.load_optimizer_state(run_dir / ckpt.LAST, optimizer, state_meta)

    images = to_tensor(train_data.pixels, spec, device).contiguous(memory_format=torch.channels_last)
    teacher_images = {s: to_tensor(p.pixels, p.spec, device) for s, p in teacher_pixels.items()}
    sampler = EpisodeSampler(
        train_data.labels, train_data.class_groups, config.way, config.shot, config.query, seed=config.seed
    )
    if config.within_group > 0:
        within = EpisodeSampler(
            train_data.labels, train_data.class_groups, config.way, config.shot, config.query,
            within_group=True, seed=config.seed,
        )  # fmt: skip
        sampler = EpisodeMix(sampler, within, config.within_group, seed=config.seed)
    augment = AffineAugment(elastic=config.elastic) if config.augment else None
    meta = {
        **_arch_meta(config),
        "preprocess": spec.to_dict(),
        "split": split.to_dict(),
        "data": {**train_set.summary(), "all_groups": dataset.groups()},
        "seed": config.seed,
        "train_config": dataclasses.asdict(config),
        "versions": ckpt.versions(),
    }
    if distiller is not None:
        meta["teacher"] = distiller.teacher.identity()
    keep_init_weights(meta, init_report, state_meta)
    # Rank 0 alone writes checkpoints and the log, and validates; the others only compute gradients.
    log = (run_dir / "log.jsonl").open("a") if ranks.main else None
    checkpoints = Checkpoints(run_dir, method, optimizer, meta, best_acc, log)
    t0 = time.perf_counter() - elapsed
    episode = start_episode
    if log is not None and init_report is not None:
        log.write(json.dumps({"init_weights": init_report}) + "\n")
    try:
        if start_episode == 0 and config.pretrain_epochs > 0:
            _pretrain(method, images, train_data, config, augment, ranks, log, t0, on_pretrain)
        for episode in range(start_episode, config.episodes):
            stats = _train_step(method, optimizer, sampler, images, config, episode, augment, device, ranks,
                                distiller, teacher_images)  # fmt: skip
            if on_step is not None and ranks.main:
                on_step(stats)
            done = episode + 1
            if done % config.val_every == 0 or done == config.episodes:
                distributed.average_buffers(method, ranks)
                if not ranks.main:
                    continue
                row = {"episode": done, "loss": stats.loss, "train_accuracy": stats.accuracy,
                       "seconds": time.perf_counter() - t0}  # fmt: skip
                if stats.distill_loss is not None:
                    row["distill_loss"] = stats.distill_loss
                result = None
                if val_data is not None:
                    result = evaluate(
                        method, val_data, way=min(config.val_way, val_data.num_classes), shot=config.val_shot,
                        query=config.val_query, episodes=config.val_episodes, seed=config.seed, device=device,
                        within_group=config.val_within_group, disjoint_drawers=config.val_within_group,
                    )  # fmt: skip
                    method.train()
                    row["val_accuracy"], row["val_ci95"] = result.accuracy, result.ci95
                    if on_validate is not None:
                        on_validate(done, result)
                checkpoints.record(done, row, result, result.accuracy if result else None)
    finally:
        if log is not None:
            log.close()
    # Every rank waits for rank 0's last checkpoint before leaving: a rank that tore its process group down
    # while rank 0 was still writing and validating was seen to abort in gloo ("terminate called without an
    # active exception", 1 CI run in many). Only on the normal path: after an error a barrier would hang.
    distributed.barrier(ranks)
    return TrainResult(run_dir, config.episodes, time.perf_counter() - t0, checkpoints.best_result,
                       checkpoints.history, meta.get("init_weights"))  # fmt: skip


def keep_init_weights(meta: dict, init_report: dict | None, state_meta: dict | None) -> None:
    """Record in a run's checkpoint meta what its backbone started from: this start's `--init-weights` report, or
    on resume the one the run began with (a resumed run loads its own weights, so the report must carry over).
    Shared by the classification and segmentation loops (train_segment.py)."""
    if init_report is not None:
        meta["init_weights"] = init_report
    elif state_meta is not None and "init_weights" in state_meta:
        meta["init_weights"] = state_meta["init_weights"]


class Checkpoints:
    """Rank 0's record of a run at each validation step, shared by the classification and segmentation loops
    (train_segment.py): the checkpoints, the log row, the history, and the best validation so far.

    best.safetensors: the new best, or simply the latest where there is nothing to select on (no validation);
    last.safetensors, with the optimizer state, always, recording the best score so far (what --resume reads).
    """

    def __init__(self, run_dir: Path, method, optimizer, meta: dict, best: float, log) -> None:
        self.run_dir, self.method, self.optimizer, self.meta, self.log = run_dir, method, optimizer, meta, log
        self.best = best  # best validation score so far (-1: none), carried over on resume
        self.best_result = None  # its validation result, where this process saw it
        self.history: list[dict] = []

    def record(self, done: int, row: dict, result=None, score: float | None = None) -> None:
        """Episode `done`'s log `row` (with "seconds"), and its validation `result` scoring `score`, if any."""
        step_meta = {**self.meta, "episode": done, "train_seconds": row["seconds"]}
        if result is not None and score > self.best:
            self.best, self.best_result = score, result
            step_meta["val"] = result.to_dict()
            ckpt.save(self.run_dir / ckpt.BEST, self.method, {**step_meta, "best_val_accuracy": self.best})
        elif result is None:
            ckpt.save(self.run_dir / ckpt.BEST, self.method, step_meta)
        ckpt.save(self.run_dir / ckpt.LAST, self.method, {**step_meta, "best_val_accuracy": self.best},
                  self.optimizer)  # fmt: skip
        self.history.append(row)
        self.log.write(json.dumps(row) + "\n")
        self.log.flush()


def _pretrain(method, images, train_data, config, augment, ranks, log, t0, on_pretrain) -> None:
    """Stage 1 of Meta-Baseline on the backbone; one log row per epoch (rank 0), episodes follow from episode 0."""

    def on_epoch(stats: PretrainStats) -> None:
        if not ranks.main:
            return
        row = {"pretrain_epoch": stats.epoch, "loss": stats.loss, "train_accuracy": stats.accuracy,
               "seconds": time.perf_counter() - t0}  # fmt: skip
        log.write(json.dumps(row) + "\n")
        log.flush()
        if on_pretrain is not None:
            on_pretrain(stats)

    labels = torch.from_numpy(train_data.labels).to(images.device)
    pretrain_classifier(
        method.backbone, images, labels, epochs=config.pretrain_epochs, batch=config.pretrain_batch, lr=config.lr,
        seed=config.seed, augment=augment, ranks=ranks, on_epoch=on_epoch,
    )  # fmt: skip


def _algorithm_config(config: TrainConfig) -> dict:
    if config.algorithm == "protonet":
        # The easyfsl options only where set, so checkpoints of the default stay as they were.
        extra = {"loss_distance": config.loss_distance} if config.loss_distance != "squared" else {}
        if config.embed_passes != 1:
            extra["passes"] = config.embed_passes
        return {"metric": config.metric, **extra}
    inner = {"inner_steps": config.inner_steps, "inner_lr": config.inner_lr}
    return {k: v for k, v in inner.items() if v is not None}  # unset: the method's own defaults


def _arch_meta(config: TrainConfig) -> dict:
    return {
        "algorithm": {"name": config.algorithm, "config": _algorithm_config(config)},
        "backbone": {"name": config.backbone, "kwargs": _backbone_kwargs(config)},
    }


def _backbone_kwargs(config: TrainConfig) -> dict:
    if ":" in config.backbone:  # a library's network (timm:NAME, torchvision:NAME): its own width and depth
        return {"in_channels": config.spec().channels}
    kwargs = {"in_channels": config.spec().channels, "width": config.width}
    if config.depth != 4:  # only where it differs, so checkpoints of the default stay as they were
        kwargs["depth"] = config.depth
    if config.activation != "leaky":  # likewise; a backbone without the option refuses it by name
        kwargs["activation"] = config.activation
    return kwargs


def _weighing_images(teachers, unrotated, recorded, device) -> dict | None:
    """Several teachers are weighed by their spread on the training images as drawn (no rotations), each at its
    own preprocessing: {spec: (N, C, S, S)}. None where nothing is to be weighed: one teacher, or a resumed run,
    which reuses the weights it recorded so that it goes on exactly as it started."""
    if len(teachers) == 1 or recorded is not None:
        return None
    return {s: to_tensor(unrotated.load(s).pixels, s, device) for s in dict.fromkeys(t.spec for t in teachers)}


def _train_step(method, optimizer, sampler, images, config, episode, augment, device, ranks, distiller=None,
                teacher_images=None) -> StepStats:  # fmt: skip
    """One meta-update: the mean query loss of `meta_batch` tasks, then one optimizer step.

    Under torchrun the tasks are dealt round-robin to the ranks and their gradients summed across ranks,
    so any number of ranks computes the same update as one process (up to float summation order).
    With a `distiller`, each task's loss adds the teachers', each run on the task's own images: the student's
    warped images where it reads the student's preprocessing, else `teacher_images`[its spec] (N, C, St, St), the
    same images at the teacher's, warped by the same draws.
    """
    lr = lr_at(config, episode)
    for group in optimizer.param_groups:
        group["lr"] = lr
    method.train()
    optimizer.zero_grad(set_to_none=True)
    losses, accuracies, distill_losses = [], [], []
    for task in range(ranks.rank, config.meta_batch, ranks.world):
        index = episode * config.meta_batch + task
        ep = sampler.episode(index)
        rows = torch.from_numpy(np.concatenate([ep.support, ep.query]))
        x = images[rows]
        xt = {s: t[rows] for s, t in (teacher_images or {}).items()}  # {teacher spec: (N, C, St, St)}
        if augment is not None:
            # Seeded per task: a resumed run draws exactly the warps the uninterrupted run would have.
            warp_seed = config.seed * 1_000_003 + index
            x = augment(x, torch.Generator(device=device).manual_seed(warp_seed))
            for s in xt:  # the same draws: warps are in coordinates relative to the side, whatever its pixels
                xt[s] = augment(xt[s], torch.Generator(device=device).manual_seed(warp_seed))
        ns = len(ep.support)
        support_labels = torch.from_numpy(ep.support_labels).to(device)
        query_labels = torch.from_numpy(ep.query_labels).to(device)
        if distiller is None:
            logits = method.episode_logits(x[:ns], support_labels, x[ns:], config.way)
            loss = F.cross_entropy(logits, query_labels)
        else:
            zs, zq = method.embed_episode(x[:ns], x[ns:])
            logits = method.logits_from_embeddings(zs, support_labels, zq, config.way)
            targets = distiller.targets({config.spec(): x, **xt})
            distill_loss = distiller.loss(zs, zq, logits, targets, support_labels, config.way)
            loss = F.cross_entropy(logits, query_labels) + distill_loss
            distill_losses.append(distill_loss.item())
        # Backward per task frees its graph at once: memory stays at one task's, not meta_batch tasks'.
        (loss / config.meta_batch).backward()
        losses.append(loss.item())
        accuracies.append((logits.argmax(1) == query_labels).float().mean().item())
    distributed.all_reduce_gradients(method, ranks)
    optimizer.step()
    return StepStats(episode=episode + 1, loss=float(np.mean(losses)), accuracy=float(np.mean(accuracies)), lr=lr,
                     distill_loss=float(np.mean(distill_losses)) if distill_losses else None)  # fmt: skip


if __name__ == "__main__":
    # `torchrun --nproc-per-node N -m metaedge.train --data ... --out ...`: the same options as `metaedge train`.
    import sys

    from metaedge.cli import app

    app(["train", *sys.argv[1:]], prog_name="metaedge.train")
