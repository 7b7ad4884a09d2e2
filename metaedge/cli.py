"""The `metaedge` command line: thin commands over the library, one library call each."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

import metaedge
from metaedge._console import console, fail, training_progress
from metaedge.cli_profile import profile
from metaedge.errors import MetaedgeError

app = typer.Typer(
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


@app.command()
def train(
    data: Annotated[list[Path], typer.Option(help="Dataset root: folder or .zip; repeat to merge several.")],
    out: Annotated[Path, typer.Option(help="Run directory for checkpoints and the log.")],
    algorithm: Annotated[str, typer.Option(help="protonet, maml, fomaml, anil or metasgd.")] = "protonet",
    backbone: Annotated[str, typer.Option(help="Backbone from the registry.")] = "conv4",
    width: Annotated[int, typer.Option(help="Backbone channel width.")] = 64,
    depth: Annotated[int, typer.Option(help="Conv blocks (each halves the side): 4 for 28 px, 5 for 56 px.")] = 4,
    metric: Annotated[
        str, typer.Option(help="ProtoNet metric: sqeuclidean or cosine (learned scale).")
    ] = "sqeuclidean",
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
    meta_batch: Annotated[int, typer.Option(help="Tasks per meta-update.")] = 1,
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
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over, replacing the run in --out.")] = False,
    nproc: Annotated[int, typer.Option(help="Processes for data-parallel training (launches torchrun).")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Meta-train a few-shot model on episodes; keep the checkpoint that validates best."""
    from metaedge.train import TrainConfig
    from metaedge.train import train as run_training

    if nproc > 1:
        raise typer.Exit(_torchrun(nproc))
    config = TrainConfig(
        data=[str(d) for d in data], out=str(out), algorithm=algorithm, metric=metric, backbone=backbone,
        width=width, depth=depth, image_size=image_size, way=way, shot=shot, query=query, within_group=within_group,
        episodes=episodes, pretrain_epochs=pretrain_epochs, pretrain_batch=pretrain_batch,
        holdout_groups=holdout_groups, val_groups=val_groups, rotations=rotations, augment=augment, lr=lr,
        meta_batch=meta_batch, inner_steps=inner_steps, inner_lr=inner_lr, flips=flips, elastic=elastic,
        strokes=[str(s) for s in strokes or []], stroke_variants=stroke_variants,
        val_every=val_every, val_way=val_way, val_within_group=val_within_group, seed=seed, split_seed=split_seed,
        device=device,
    )  # fmt: skip
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone reports
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
    if as_json:
        print(json.dumps(summary))
    else:
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Mean accuracy and 95% confidence interval over seeded episodes of classes the model never trained on."""
    from metaedge.evaluate import evaluate_checkpoint
    from metaedge.train import pick_device

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
        list[Path] | None, typer.Option(help="Images for int8 calibration; default: 512 of the training images.")
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Export a checkpoint to a verified deployment bundle: ONNX backbone, manifest, parity report."""
    from metaedge.exporter import export_checkpoint
    from metaedge.targets import list_targets as all_targets

    try:
        if list_targets:
            return _print_targets(all_targets(), as_json)
        if checkpoint is None or (out is None and not dry_run):
            fail("export needs CHECKPOINT and --out")
        result = export_checkpoint(
            checkpoint, out, target=target, fmt=fmt, fp16=fp16, int8=int8, opset=opset, force=force,
            calibration_data=[str(p) for p in calibration_data or []], dry_run=dry_run, overwrite=overwrite,
            verify_data=[str(p) for p in verify_data or []], views=views, enroll_views=enroll_views,
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
        console.print(
            f"parity {r.backend} ({r.precision}) on {r.images} images: max |diff| {r.max_abs_diff:.2e}, "
            f"min cosine {r.min_cosine:.6f}, {r.episodes}-episode agreement {100 * r.agreement:.2f}%"
        )
    console.print(f"wrote {result.bundle.path} ({result.bundle.model_id}) in {result.seconds:.1f} s")


def _print_targets(profiles: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps({name: p.to_dict() for name, p in profiles.items()}))
        return
    from rich.table import Table

    table = Table("target", "providers", "precision", "max batch", "CUDA arch", "description")
    for name, p in profiles.items():
        short = ", ".join(x.removesuffix("ExecutionProvider") for x in p.onnxruntime_providers)
        table.add_row(name, short, p.precision, str(p.max_batch), ",".join(p.cuda_architectures) or "-", p.description)
    console.print(table)


def _default_store() -> Path:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return Path(os.environ.get("METAEDGE_STORE") or base / "metaedge" / "gallery.db")


BundleOpt = Annotated[Path | None, typer.Option(help="Bundle directory; default: the shipped reference bundle.")]
StoreOpt = Annotated[
    Path | None, typer.Option(help="Gallery database; default: $METAEDGE_STORE or ~/.local/share/metaedge/gallery.db")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _runtime(bundle: Path | None, store: Path | None, readonly: bool = False):
    from metaedge.runtime import Runtime

    store = store or _default_store()
    if not readonly:
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
    console.print(f"enrolled {result.label!r}: {result.images} image(s), {result.total_embeddings} in the class; "
                  f"{result.timings_ms['total']:.1f} ms ({stages})")  # fmt: skip


@app.command()
def classify(
    images: Annotated[list[Path], typer.Argument(help="Images to classify.")],
    bundle: BundleOpt = None,
    store: StoreOpt = None,
    top_k: Annotated[int, typer.Option(help="How many classes to list per image.")] = 1,
    adapt: Annotated[bool, typer.Option(help="Rank with a head adapted on all enrolled images.")] = False,
    threshold: Annotated[float | None, typer.Option(help="Open-set threshold; default: the bundle's.")] = None,
    no_threshold: Annotated[bool, typer.Option(help="Never answer unknown.")] = False,
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
        others = "  ".join(f"{t['label']} {t['score']:.3f}" for t in row["top_k"][1:])
        shown = row["label"] if row["label"] is not None else "[yellow]unknown[/]"
        console.print(f"{row['image']}: [bold]{shown}[/] ({row['score']:.3f})  {others}", highlight=False)


gallery_app = typer.Typer(help="List, remove, rename, export and import enrolled classes.", no_args_is_help=True)
app.add_typer(gallery_app, name="gallery")


def _gallery(bundle: Path | None, store: Path | None, readonly: bool = False):
    from metaedge import bundle as bundle_io
    from metaedge.gallery import Gallery
    from metaedge.runtime import REFERENCE_BUNDLE

    b = bundle_io.load(bundle or REFERENCE_BUNDLE)
    return Gallery(store or _default_store(), b.model_id, b.embedding_dim, create=False, readonly=readonly)


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
        console.print(f"{r.label}\t{r.count} image(s)", highlight=False)
    console.print(f"{len(records)} class(es)")


@gallery_app.command("remove")
def gallery_remove(label: str, bundle: BundleOpt = None, store: StoreOpt = None) -> None:
    """Remove one class and all its images."""
    try:
        with _gallery(bundle, store) as g:
            g.remove(label)
    except MetaedgeError as e:
        fail(str(e))
    console.print(f"removed {label!r}")


@gallery_app.command("rename")
def gallery_rename(old: str, new: str, bundle: BundleOpt = None, store: StoreOpt = None) -> None:
    """Rename a class."""
    try:
        with _gallery(bundle, store) as g:
            g.rename(old, new)
    except MetaedgeError as e:
        fail(str(e))
    console.print(f"renamed {old!r} to {new!r}")


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
    """Add the classes of a JSON export (made with the same bundle) to the gallery, all or nothing."""
    try:
        with _gallery(bundle, store) as g:
            n = g.import_json(path, replace=replace)
    except MetaedgeError as e:
        fail(str(e))
    console.print(f"imported {n} class(es) from {path}")


@app.command()
def demo(
    bundle: BundleOpt = None,
    shots: Annotated[int, typer.Option(help="Images enrolled per character (1 or 5 are the classic settings).")] = 5,
    way: Annotated[int, typer.Option(help="Characters enrolled.")] = 20,
    seed: Annotated[int, typer.Option(help="Which characters and drawers.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Enroll characters of an alphabet the shipped model never saw, classify the rest, report accuracy and latency."""
    from metaedge.demo import run_demo

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
