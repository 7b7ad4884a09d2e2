"""The `metaedge` command line: thin commands over the library, one library call each."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

import metaedge
from metaedge._console import console, err_console, fail, training_progress
from metaedge.cli_locate import locate, locate_demo
from metaedge.cli_profile import profile
from metaedge.cli_serve import serve
from metaedge.errors import MetaedgeError

# How long a torchrun rank other than 0 waits, after a settings error every rank finds, for torchrun to stop it
# once rank 0 has reported the error and failed (torchrun looks every 0.1 s by default).
RANK_ERROR_GRACE_S = 30.0


class _FlagsShowNoType:
    """typer 0.29's help puts `<bool>` beside every flag, --help and --version included, as if it took a value;
    a flag takes none, and an empty metavar shows nothing there (typer's own `is_flag` is deprecated and
    changes nothing in the help)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)  # the command's own, then the help option typer adds
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
        return params


class _Group(_FlagsShowNoType, typer.core.TyperGroup):
    pass


class _Command(_FlagsShowNoType, typer.core.TyperCommand):
    pass


class _Typer(typer.Typer):
    """A Typer whose groups and commands all show flags without a type (every command, later ones included)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cls=_Group, **kwargs)

    def command(self, *args, **kwargs):
        return super().command(*args, cls=kwargs.pop("cls", None) or _Command, **kwargs)


app = _Typer(
    name="metaedge",
    help="Few-shot image recognition for edge devices: meta-train, evaluate, export, enroll, classify, profile.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"metaedge {metaedge.__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Few-shot image recognition for edge devices."""


def _teacher_option(teachers: list[Path] | None) -> str | list[str] | None:
    """One --teacher is stored as a string, as runs always stored it; several as a list."""
    if not teachers:
        return None
    return str(teachers[0]) if len(teachers) == 1 else [str(t) for t in teachers]


@app.command()
def train(
    data: Annotated[list[Path], typer.Option(help="Dataset root: folder or .zip; repeat to merge several.")],
    out: Annotated[Path, typer.Option(help="Run directory for checkpoints and the log.")],
    algorithm: Annotated[str, typer.Option(help="protonet, maml, fomaml, anil or metasgd.")] = "protonet",
    backbone: Annotated[str, typer.Option(help="Backbone from the registry.")] = "conv4",
    width: Annotated[int, typer.Option(help="Backbone channel width.")] = 64,
    depth: Annotated[int, typer.Option(help="Conv blocks (each halves the side): 4 for 28 px, 5 for 56 px.")] = 4,
    activation: Annotated[
        str, typer.Option(help="ResNet-12: leaky (LeakyReLU 0.1) or relu (folds into int8 convolutions: faster).")
    ] = "leaky",
    metric: Annotated[
        str, typer.Option(help="ProtoNet metric: sqeuclidean or cosine (learned scale).")
    ] = "sqeuclidean",
    loss_distance: Annotated[
        str, typer.Option(help="ProtoNet sqeuclidean: train on the squared or the plain euclidean distance.")
    ] = "squared",
    embed_passes: Annotated[
        int, typer.Option(help="ProtoNet: 1 forward pass for support and query, or 2 (own batch-norm statistics).")
    ] = 1,
    teacher: Annotated[
        list[Path] | None,
        typer.Option(help="Distil from this run folder or bundle too (metaedge/distill.py); repeat for several "
                          "teachers side by side."),
    ] = None,
    distill: Annotated[str, typer.Option(help="With --teacher: kl, relational or kl+relational.")] = "kl",
    distill_weight: Annotated[float, typer.Option(help="With --teacher: weight of the distillation loss.")] = 1.0,
    distill_temperature: Annotated[float, typer.Option(help="With --teacher: temperature of the kl loss.")] = 4.0,
    image_size: Annotated[int, typer.Option(help="Input side in pixels.")] = 28,
    way: Annotated[int, typer.Option(help="Classes per training episode.")] = 60,
    shot: Annotated[int, typer.Option(help="Support images per class.")] = 1,
    query: Annotated[int, typer.Option(help="Query images per class.")] = 5,
    within_group: Annotated[
        float, typer.Option(help="Fraction of training episodes drawn from one group (alphabet), 0 to 1.")
    ] = 0.0,
    episodes: Annotated[int, typer.Option(help="Training episodes in total.")] = 2000,
    pretrain_epochs: Annotated[
        int, typer.Option(help="First train the backbone as a classifier of all training classes for N epochs.")
    ] = 0,
    pretrain_batch: Annotated[int, typer.Option(help="Images per pre-training batch.")] = 128,
    holdout_groups: Annotated[int, typer.Option(help="Groups (alphabets) held out for testing.")] = 2,
    val_groups: Annotated[int, typer.Option(help="Further groups held out to pick the best checkpoint.")] = 1,
    rotations: Annotated[bool, typer.Option(help="Each 90-degree rotation of a class is a new class.")] = True,
    flips: Annotated[bool, typer.Option(help="With --rotations: mirror images of classes are new classes.")] = False,
    augment: Annotated[bool, typer.Option(help="Random affine warps of training images.")] = True,
    elastic: Annotated[
        float, typer.Option(help="With --augment: elastic distortion, largest displacement as a fraction of the side.")
    ] = 0.0,
    lr: Annotated[float, typer.Option(help="Adam learning rate (cosine-decayed).")] = 1e-3,
    meta_batch: Annotated[
        int | None, typer.Option(help="Tasks per meta-update; default: one per rank (1 without torchrun).")
    ] = None,
    inner_steps: Annotated[int | None, typer.Option(help="Inner-loop steps (maml, fomaml, anil, metasgd).")] = None,
    inner_lr: Annotated[float | None, typer.Option(help="Inner-loop step size (metasgd: its start).")] = None,
    strokes: Annotated[
        list[Path] | None, typer.Option(help="Stroke files (folder or zip) of the --data images; repeat for several.")
    ] = None,
    stroke_variants: Annotated[
        int, typer.Option(help="With --strokes: re-renderings of each training drawing from its pen trajectory.")
    ] = 0,
    val_every: Annotated[int, typer.Option(help="Validate and checkpoint every N episodes.")] = 500,
    val_way: Annotated[int, typer.Option(help="Classes per validation episode.")] = 5,
    val_within_group: Annotated[
        bool, typer.Option(help="Validate within one group, support and query by different drawers.")
    ] = False,
    seed: Annotated[
        int, typer.Option(help="Seed of the initialisation and the episodes, and of the split unless --split-seed.")
    ] = 0,
    split_seed: Annotated[
        int | None,
        typer.Option(help="Seed of the group split alone: runs of other --seed values hold out the same groups."),
    ] = None,
    task: Annotated[
        str, typer.Option(help="classify, or segment: one-shot segmentation of cluttered scenes (protoseg, fcn).")
    ] = "classify",
    clutter: Annotated[str, typer.Option(help="--task segment: characters per scene, drawn from these.")] = "4,8,16,32",
    one_colour: Annotated[
        float, typer.Option(help="--task segment: fraction of scenes with every character white.")
    ] = 0.5,
    decoder: Annotated[bool, typer.Option(help="--task segment: a light mask decoder over the cosine map.")] = True,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    preprocess: Annotated[
        str | None,
        typer.Option(help="Image preprocessing: a preset (rgb, imagenet) or a JSON file, at --image-size; "
                          "default: Omniglot's."),
    ] = None,
    init_weights: Annotated[
        Path | None, typer.Option(help="Start the backbone from these weights: safetensors or a torch state dict.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over, replacing the run in --out.")] = False,
    nproc: Annotated[int, typer.Option(help="Processes for data-parallel training (launches torchrun).")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Meta-train a few-shot model on episodes; keep the checkpoint that validates best."""
    from metaedge.data.clutter import parse_clutter
    from metaedge.data.preprocess import preprocess_settings
    from metaedge.distributed import world_size
    from metaedge.train import TrainConfig, for_ranks
    from metaedge.train import train as run_training

    if nproc > 1:
        raise typer.Exit(_torchrun(nproc))
    try:
        clutter_levels = parse_clutter(clutter)
        # --image-size is the input side of a trained network, whatever side a preset or file names.
        settings = {k: v for k, v in preprocess_settings(preprocess).items() if k != "size"} if preprocess else {}
    except MetaedgeError as e:
        fail(str(e))
    config = TrainConfig(
        data=[str(d) for d in data], out=str(out), algorithm=algorithm, metric=metric, backbone=backbone,
        width=width, depth=depth, activation=activation, image_size=image_size, way=way, shot=shot, query=query,
        within_group=within_group, episodes=episodes, pretrain_epochs=pretrain_epochs, pretrain_batch=pretrain_batch,
        holdout_groups=holdout_groups, val_groups=val_groups, rotations=rotations, augment=augment, lr=lr,
        meta_batch=meta_batch, inner_steps=inner_steps, inner_lr=inner_lr, flips=flips, elastic=elastic,
        strokes=[str(s) for s in strokes or []], stroke_variants=stroke_variants,
        val_every=val_every, val_way=val_way, val_within_group=val_within_group, seed=seed, split_seed=split_seed,
        task=task, clutter=clutter_levels, one_colour=one_colour, decoder=decoder,
        device=device, preprocess=settings, init_weights=str(init_weights) if init_weights else None,
        loss_distance=loss_distance, embed_passes=embed_passes, teacher=_teacher_option(teacher),
        distill=distill, distill_weight=distill_weight, distill_temperature=distill_temperature,
    )  # fmt: skip
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone reports
    world = world_size()
    try:
        config = for_ranks(config, world)  # the settings the ranks share, checked before any progress bar
    except MetaedgeError as e:
        if not main_rank:
            # Every rank finds the same: rank 0 says it once. Leaving at once let torchrun see this rank fail
            # first and stop rank 0 before its message was out (once in fresh-clone CI), so wait for torchrun to
            # stop this rank after rank 0's exit; the bound only matters if rank 0 somehow went on.
            time.sleep(RANK_ERROR_GRACE_S)
            raise typer.Exit(1) from None
        fail(str(e))
    if world > 1 and main_rank and not resume:  # a resumed run keeps its own meta-batch
        how = "one task per rank; --meta-batch sets it" if meta_batch is None else "--meta-batch"
        err_console.print(f"meta-batch {config.meta_batch} over {world} ranks ({how})", highlight=False)
    try:
        with training_progress(episodes, enabled=not as_json and main_rank) as (on_step, on_validate, on_pretrain):
            result = run_training(config, resume=resume, overwrite=overwrite, on_step=on_step,
                                  on_validate=on_validate, on_pretrain=on_pretrain)  # fmt: skip
    except MetaedgeError as e:
        fail(str(e))
    summary = {"run_dir": str(result.run_dir), "episodes": result.episodes, "minutes": result.seconds / 60,
               "best_val": result.best_val.to_dict() if result.best_val else None}  # fmt: skip
    if not main_rank:
        return
    if result.init_weights is not None:
        summary["init_weights"] = result.init_weights
    if as_json:
        print(json.dumps(summary))
    else:
        if result.init_weights is not None:
            from metaedge.weights import WeightsReport

            console.print(f"init weights: {WeightsReport(**result.init_weights).summary()}", highlight=False)
        console.print(f"trained {result.episodes} episodes in {summary['minutes']:.1f} min -> {result.run_dir}")


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="Run directory (its best checkpoint) or checkpoint file.")],
    data: Annotated[list[Path] | None, typer.Option(help="Dataset roots; default: the ones it trained from.")] = None,
    way: Annotated[int, typer.Option(help="Classes per episode.")] = 5,
    shot: Annotated[int, typer.Option(help="Support images per class.")] = 1,
    query: Annotated[int, typer.Option(help="Query images per class.")] = 15,
    episodes: Annotated[int, typer.Option(help="Number of seeded episodes.")] = 1000,
    within_group: Annotated[bool, typer.Option(help="All classes of an episode from one group (alphabet).")] = False,
    disjoint_drawers: Annotated[bool, typer.Option(help="Support and queries by different drawers.")] = False,
    groups: Annotated[str | None, typer.Option(help="Comma-separated groups; default: held-out ones.")] = None,
    seed: Annotated[int, typer.Option(help="Episode seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    views: Annotated[
        int | None, typer.Option(help="Embed each image as the mean over N fixed warps of it (1-9); default: 1.")
    ] = None,
    enroll_views: Annotated[
        int | None, typer.Option(help="Support images only through N views (1-9); queries keep --views.")
    ] = None,
    task: Annotated[
        str, typer.Option(help="classify, or segment: mean IoU and localisation on --episodes scenes per level.")
    ] = "classify",
    clutter: Annotated[str, typer.Option(help="--task segment: clutter levels (characters per scene).")] = "4,32",
    decoder: Annotated[
        bool | None, typer.Option(help="--task segment: use the mask decoder (--no-decoder: the cosine map alone).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Mean accuracy and 95% confidence interval over seeded episodes of classes the model never trained on."""
    from metaedge.evaluate import evaluate_checkpoint
    from metaedge.train import pick_device

    if task == "segment":
        return _evaluate_segment(checkpoint, data, groups, clutter, episodes, shot, seed, decoder, device, as_json)
    if task != "classify":
        fail(f"unknown task {task!r}; choose classify or segment")
    try:
        result = evaluate_checkpoint(
            checkpoint, data, groups=groups.split(",") if groups else None, device=pick_device(device),
            way=way, shot=shot, query=query, episodes=episodes, within_group=within_group,
            disjoint_drawers=disjoint_drawers, seed=seed, views=views, enroll_views=enroll_views,
        )  # fmt: skip
    except MetaedgeError as e:
        fail(str(e))
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        console.print(
            f"{result.way}-way {result.shot}-shot on {', '.join(result.groups)}: "
            f"[bold]{100 * result.accuracy:.2f}% ± {100 * result.ci95:.2f}[/] (95% CI, {result.episodes} episodes)"
        )


def _evaluate_segment(checkpoint, data, groups, clutter, scenes, shot, seed, decoder, device, as_json) -> None:
    """`metaedge evaluate --task segment`: one row per clutter level and colouring."""
    from metaedge.data.clutter import parse_clutter
    from metaedge.evaluate_segment import evaluate_segment_checkpoint
    from metaedge.train import pick_device

    try:
        results = evaluate_segment_checkpoint(
            checkpoint, data, groups=groups.split(",") if groups else None, clutter=parse_clutter(clutter),
            scenes=scenes, seed=seed, shot=shot, use_decoder=decoder, device=pick_device(device),
        )  # fmt: skip
    except MetaedgeError as e:
        fail(str(e))
    if as_json:
        print(json.dumps([r.to_dict() for r in results]))
        return
    for r in results:
        console.print(
            f"{r.clutter:>4} characters, {'one-colour' if r.one_colour else 'coloured  '}, {r.shot}-shot: "
            f"IoU [bold]{100 * r.iou:.1f} ± {100 * r.iou_ci95:.1f}[/], localisation {100 * r.localisation:.1f} ± "
            f"{100 * r.localisation_ci95:.1f} (95% CI, {r.scenes} scenes, {'decoder' if r.decoder else 'no decoder'})"
        )


@app.command()
def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run directories (their best checkpoints).")],
    out: Annotated[Path, typer.Option(help="Run directory for the combined checkpoint.")],
    overwrite: Annotated[bool, typer.Option(help="Replace a checkpoint already in --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Combine trained ProtoNets into one model (embeddings side by side) to evaluate, export and profile."""
    from metaedge.ensemble import combine

    try:
        path = combine(runs, out, overwrite=overwrite)
    except MetaedgeError as e:
        fail(str(e))
    if as_json:
        print(json.dumps({"checkpoint": str(path), "members": [str(r) for r in runs]}))
    else:
        console.print(f"combined {len(runs)} runs -> {path}")


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path | None, typer.Argument(help="Run directory or checkpoint file.")] = None,
    out: Annotated[Path | None, typer.Option(help="Bundle directory to write.")] = None,
    target: Annotated[str, typer.Option(help="Board profile (see --list-targets).")] = "x86-cpu",
    fmt: Annotated[str, typer.Option("--format", help="onnx, or tensorrt (an engine beside the ONNX).")] = "onnx",
    fp16: Annotated[bool, typer.Option(help="TensorRT engine in fp16.")] = False,
    int8: Annotated[
        bool, typer.Option(help="int8: the ONNX graph for ONNX Runtime on CPU targets, or the TensorRT engine.")
    ] = False,
    calibration_data: Annotated[
        list[Path] | None, typer.Option(help="Images for int8 calibration; default: 2048 of the training images.")
    ] = None,
    calibration_size: Annotated[
        int | None,
        typer.Option(help="int8: how many calibration images to sample; default 2048. Ranges are min-max: a larger "
                          "sample clips fewer outliers but quantizes in coarser steps."),
    ] = None,
    verify_data: Annotated[list[Path] | None, typer.Option(help="Images for the parity check.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    force: Annotated[bool, typer.Option(help="Write the bundle even if the parity check fails.")] = False,
    dry_run: Annotated[
        bool, typer.Option(help="Print the trtexec command for a TensorRT build, build nothing.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle at --out.")] = False,
    list_targets: Annotated[bool, typer.Option(help="List the board profiles and exit.")] = False,
    views: Annotated[
        int | None, typer.Option(help="Test-time views (1-9) built into the graph: each image embedded as a mean.")
    ] = None,
    enroll_views: Annotated[
        int | None,
        typer.Option(help="Views (1-9) for enrollment only: a second graph for support images; queries keep --views."),
    ] = None,
    onnx_model: Annotated[
        Path | None,
        typer.Option("--onnx", help="Instead of a checkpoint: an ONNX feature extractor made elsewhere to wrap."),
    ] = None,
    preprocess: Annotated[
        str | None, typer.Option(help="With --onnx: its preprocessing, a preset (imagenet, rgb) or a JSON file.")
    ] = None,
    metric: Annotated[str, typer.Option(help="With --onnx: cosine or sqeuclidean.")] = "cosine",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Export a checkpoint to a verified deployment bundle: ONNX backbone, manifest, parity report."""
    from metaedge.exporter import export_checkpoint
    from metaedge.targets import list_targets as all_targets

    try:
        if list_targets:
            return _print_targets(all_targets(), as_json)
        if onnx_model is not None:
            from metaedge.onnx_import import import_onnx

            if checkpoint is not None or out is None or preprocess is None:
                fail("export --onnx FILE needs --preprocess and --out, and no CHECKPOINT")
            result = import_onnx(
                onnx_model, out, preprocess=preprocess, verify_data=[str(p) for p in verify_data or []],
                metric=metric, target=target, int8=int8, calibration_data=[str(p) for p in calibration_data or []],
                calibration_size=calibration_size, force=force, overwrite=overwrite,
            )  # fmt: skip
        elif checkpoint is None or (out is None and not dry_run):
            fail("export needs CHECKPOINT and --out")
        else:
            result = export_checkpoint(
                checkpoint, out, target=target, fmt=fmt, fp16=fp16, int8=int8, opset=opset, force=force,
                calibration_data=[str(p) for p in calibration_data or []], calibration_size=calibration_size,
                dry_run=dry_run, overwrite=overwrite, verify_data=[str(p) for p in verify_data or []], views=views,
                enroll_views=enroll_views,
            )  # fmt: skip
    except MetaedgeError as e:
        fail(str(e))
    if result.dry_run_command:
        print(result.dry_run_command)
        return
    summary = {"bundle": str(result.bundle.path), "model_id": result.bundle.model_id, "seconds": result.seconds,
               "parity": [r.to_dict() for r in result.parity]}  # fmt: skip
    if as_json:
        print(json.dumps(summary))
        return
    for r in result.parity:
        # Classification reports carry both sides' accuracy on the agreement episodes; locate's, mask IoUs.
        accuracy, both = getattr(r, "reference_accuracy", None), ""
        if accuracy is not None:
            both = f" (accuracy {100 * accuracy:.1f}% reference, {100 * r.candidate_accuracy:.1f}% exported)"
        console.print(
            f"parity {r.backend} ({r.precision}) on {r.images} images: max |diff| {r.max_abs_diff:.2e}, "
            f"min cosine {r.min_cosine:.6f}, {r.episodes}-episode agreement {100 * r.agreement:.2f}%{both}"
        )
    console.print(f"wrote {result.bundle.path} ({result.bundle.model_id}) in {result.seconds:.1f} s")


def _print_targets(profiles: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps({name: p.to_dict() for name, p in profiles.items()}))
        return
    from metaedge.targets import targets_table

    console.print(targets_table(profiles))


@app.command()
def calibrate(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory whose open-set curve to calibrate again.")],
    data: Annotated[
        list[Path] | None, typer.Option(help="Dataset root (repeatable); default: the roots the model trained from.")
    ] = None,
    groups: Annotated[
        str | None, typer.Option(help="Comma-separated groups; default: the validation groups, else the test groups.")
    ] = None,
    drawers: Annotated[str | None, typer.Option(help="Only images by these drawers, e.g. 1-10.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest's new open_set as JSON.")] = False,
) -> None:
    """Recalibrate a bundle's open-set thresholds per number of shots (no re-export; only its manifest changes)."""
    from metaedge.open_set import parse_drawers, recalibrate_bundle, summary

    try:
        chosen = [g.strip() for g in groups.split(",") if g.strip()] if groups else None
        result = recalibrate_bundle(bundle, [str(p) for p in data or []], groups=chosen,
                                    drawers=parse_drawers(drawers) if drawers else None)  # fmt: skip
    except MetaedgeError as e:
        fail(str(e))
    if as_json:
        print(json.dumps(result.manifest["open_set"]))
        return
    console.print(summary(result.manifest["open_set"]), highlight=False)
    console.print(f"rewrote {result.path / 'manifest.json'}")


def _default_store() -> Path:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return Path(os.environ.get("METAEDGE_STORE") or base / "metaedge" / "gallery.db")


BundleOpt = Annotated[Path | None, typer.Option(help="Bundle directory; default: the shipped reference bundle.")]
StoreOpt = Annotated[
    Path | None, typer.Option(help="Gallery database; default: $METAEDGE_STORE or ~/.local/share/metaedge/gallery.db")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _existing_store(store: Path | None) -> Path:
    """The gallery a command reads or changes; where there is none yet, the error says how to make one."""
    from metaedge.gallery import GalleryError

    store = store or _default_store()
    if str(store) != ":memory:" and not store.exists():  # ":memory:": the library's own error says more
        raise GalleryError(f"no gallery at {store} yet: enroll a class first (metaedge enroll LABEL IMAGES...), "
                           "or pass --store (or set $METAEDGE_STORE) to use an existing gallery")  # fmt: skip
    return store


def _runtime(bundle: Path | None, store: Path | None, readonly: bool = False):
    from metaedge.runtime import Runtime

    if readonly:
        store = _existing_store(store)
    else:
        store = store or _default_store()
        store.parent.mkdir(parents=True, exist_ok=True)
    return Runtime(bundle, store, readonly=readonly)


@app.command()
def enroll(
    label: Annotated[str, typer.Argument(help="Name of the class to add.")],
    images: Annotated[list[Path], typer.Argument(help="A few images of the class.")],
    bundle: BundleOpt = None,
    store: StoreOpt = None,
    replace: Annotated[bool, typer.Option(help="Replace the class's images instead of adding to them.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add a new class to the gallery from a few images (one transaction: all or nothing)."""
    try:
        with _runtime(bundle, store) as rt:
            result = rt.enroll(label, images, replace=replace)
    except MetaedgeError as e:
        fail(str(e))
    if as_json:
        print(json.dumps(result.__dict__))
        return
    stages = ", ".join(f"{k} {v:.1f} ms" for k, v in result.timings_ms.items() if k != "total")
    console.print(f"enrolled {escape(repr(result.label))}: {result.images} image(s), {result.total_embeddings} in "
                  f"the class; {result.timings_ms['total']:.1f} ms ({stages})")  # fmt: skip


@app.command()
def classify(
    images: Annotated[list[Path], typer.Argument(help="Images to classify.")],
    bundle: BundleOpt = None,
    store: StoreOpt = None,
    top_k: Annotated[int, typer.Option(help="How many classes to list per image.")] = 1,
    adapt: Annotated[bool, typer.Option(help="Rank with a head adapted on all enrolled images.")] = False,
    threshold: Annotated[float | None, typer.Option(help="Open-set threshold; default: the bundle's.")] = None,
    no_threshold: Annotated[bool, typer.Option("--no-threshold", help="Never answer unknown.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Classify images against every enrolled class; "unknown" when nothing matches well enough."""
    from metaedge.runtime import _MANIFEST_THRESHOLD

    limit = None if no_threshold else (_MANIFEST_THRESHOLD if threshold is None else threshold)
    try:
        with _runtime(bundle, store, readonly=True) as rt:
            predictions = rt.classify(images, top_k=top_k, adapt=adapt, threshold=limit)
    except MetaedgeError as e:
        fail(str(e))
    rows = [{"image": str(img), **p.to_dict()} for img, p in zip(images, predictions)]
    if as_json:
        print(json.dumps(rows))
        return
    for row in rows:
        # Labels and paths are the user's: escaped, so "[/]" in one is text, not rich markup (it used to crash);
        # one line per image however long, for whoever reads the output line by line.
        others = "  ".join(f"{escape(t['label'])} {t['score']:.3f}" for t in row["top_k"][1:])
        shown = escape(row["label"]) if row["label"] is not None else "[yellow]unknown[/]"
        console.print(f"{escape(row['image'])}: [bold]{shown}[/] ({row['score']:.3f})  {others}", highlight=False,
                      soft_wrap=True)  # fmt: skip


gallery_app = _Typer(help="List, remove, rename, export and import enrolled classes.", no_args_is_help=True)
app.add_typer(gallery_app, name="gallery")


def _gallery(bundle: Path | None, store: Path | None, readonly: bool = False, create: bool = False):
    """create: a missing gallery is made (import, which adds classes as enroll does); else it is an error."""
    from metaedge import bundle as bundle_io
    from metaedge.gallery import Gallery
    from metaedge.runtime import REFERENCE_BUNDLE

    if create:
        store = store or _default_store()
        store.parent.mkdir(parents=True, exist_ok=True)
    else:
        store = _existing_store(store)
    b = bundle_io.load(bundle or REFERENCE_BUNDLE)
    return Gallery(store, b.model_id, b.embedding_dim, create=create, readonly=readonly)


@gallery_app.command("list")
def gallery_list(bundle: BundleOpt = None, store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """Every enrolled class with its number of images."""
    try:
        with _gallery(bundle, store, readonly=True) as g:
            records = g.records()
    except MetaedgeError as e:
        fail(str(e))
    if as_json:
        print(json.dumps([r.__dict__ for r in records]))
        return
    for r in records:
        console.print(f"{escape(r.label)}\t{r.count} image(s)", highlight=False, soft_wrap=True)
    console.print(f"{len(records)} class(es)")


@gallery_app.command("remove")
def gallery_remove(label: str, bundle: BundleOpt = None, store: StoreOpt = None) -> None:
    """Remove one class and all its images."""
    try:
        with _gallery(bundle, store) as g:
            g.remove(label)
    except MetaedgeError as e:
        fail(str(e))
    console.print(f"removed {escape(repr(label))}")


@gallery_app.command("rename")
def gallery_rename(old: str, new: str, bundle: BundleOpt = None, store: StoreOpt = None) -> None:
    """Rename a class."""
    try:
        with _gallery(bundle, store) as g:
            g.rename(old, new)
    except MetaedgeError as e:
        fail(str(e))
    console.print(f"renamed {escape(repr(old))} to {escape(repr(new))}")


@gallery_app.command("export")
def gallery_export(path: Path, bundle: BundleOpt = None, store: StoreOpt = None) -> None:
    """Write every class (embeddings included) to a JSON file."""
    try:
        with _gallery(bundle, store, readonly=True) as g:
            n = g.export_json(path)
    except MetaedgeError as e:
        fail(str(e))
    console.print(f"exported {n} class(es) to {path}")


@gallery_app.command("import")
def gallery_import(
    path: Path,
    bundle: BundleOpt = None,
    store: StoreOpt = None,
    replace: Annotated[bool, typer.Option(help="Replace classes that already exist.")] = False,
) -> None:
    """Add the classes of a JSON export (made with the same bundle) to the gallery, all or nothing; a gallery
    that does not exist yet is made, as enroll makes one (and removed again if the import fails)."""
    store = store or _default_store()
    fresh = not store.exists()
    try:
        with _gallery(bundle, store, create=True) as g:
            n = g.import_json(path, replace=replace)
    except MetaedgeError as e:
        if fresh:  # leave the machine as it was: no empty gallery behind a failed first import
            for leftover in (store, *(store.with_name(store.name + s) for s in ("-wal", "-shm", "-journal"))):
                leftover.unlink(missing_ok=True)
        fail(str(e))
    console.print(f"imported {n} class(es) from {path}")


@app.command()
def demo(
    bundle: BundleOpt = None,
    shots: Annotated[int, typer.Option(help="Images enrolled per character (1 or 5 are the classic settings).")] = 5,
    way: Annotated[int, typer.Option(help="Characters enrolled.")] = 20,
    seed: Annotated[int, typer.Option(help="Which characters and drawers.")] = 0,
    as_json: JsonOpt = False,
    task: Annotated[str, typer.Option(help="classify, or locate: find characters in cluttered scenes.")] = "classify",
    overlay: Annotated[Path | None, typer.Option(help="With --task locate: write a PNG per scene here.")] = None,
) -> None:
    """Enroll characters of an alphabet the shipped model never saw, classify the rest, report accuracy and latency."""
    from metaedge.demo import run_demo

    if task != "classify":  # --task locate: metaedge/cli_locate.py
        return locate_demo(task, bundle, way=way, seed=seed, overlay=overlay, as_json=as_json)
    try:
        r = run_demo(bundle, shots=shots, way=way, seed=seed)
    except MetaedgeError as e:
        fail(str(e))
    if as_json:
        print(json.dumps(r.to_dict()))
        return
    e, c = r.enroll_ms_per_class, r.classify_ms_per_image
    console.print(f"[bold]{r.alphabet}[/], never seen in training: {r.way} characters enrolled from {r.shots} "
                  f"image(s) each, {r.queries} drawings by other people classified one at a time")  # fmt: skip
    console.print(f"accuracy [bold]{100 * r.accuracy:.1f}%[/] ± {100 * r.ci95:.1f} (95% CI; {r.correct}/{r.queries}, "
                  f"{r.unknown} below the open-set threshold)")  # fmt: skip
    console.print(
        f"enroll one class ({r.shots} images, decode to commit): p50 {e['p50']:.2f} ms, p90 {e['p90']:.2f} ms"
    )
    console.print(f"classify one image (decode to answer): p50 {c['p50']:.2f} ms, p90 {c['p90']:.2f} ms")
    console.print(f"model {r.model_id}")


# `metaedge profile` lives in its own file: it is the largest command and shares nothing with the others.
app.command("profile")(profile)
# `metaedge serve` too: it pulls in FastAPI and uvicorn, only when run.
app.command("serve")(serve)
# `metaedge locate`: classes found in scenes, through a localisation bundle (metaedge/locate.py).
app.command("locate")(locate)


def _torchrun(nproc: int) -> int:
    """Re-run this very command under torchrun on one machine, without --nproc; returns torchrun's exit code."""
    import subprocess
    import sys

    args, skip = [], False
    for arg in sys.argv[sys.argv.index("train") + 1 :]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "metaedge.train", *args]  # fmt: skip
    return subprocess.call(command)


def main() -> None:
    app()
