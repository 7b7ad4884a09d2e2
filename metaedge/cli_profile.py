"""`metaedge profile`: time every stage of a bundle on this device, or compare two saved profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from metaedge._console import console, err_console, fail
from metaedge.errors import MetaedgeError


def profile(
    bundle: Annotated[Path | None, typer.Option(help="Bundle directory; default: the reference bundle.")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Training run directory or checkpoint: adds the PyTorch eager backend.")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Profile with this target profile's providers and threads, not the bundle's.")
    ] = None,
    backend: Annotated[
        list[str] | None, typer.Option(help="torch, onnxruntime or tensorrt; repeat for several. Default: all.")
    ] = None,
    batch: Annotated[str, typer.Option(help="Batch sizes of the per-image stages, e.g. 1,8,32.")] = "1,8",
    shots: Annotated[str, typer.Option(help="Images per class of the per-class stages.")] = "1,5",
    ways: Annotated[str, typer.Option(help="Enrolled classes of the per-class stages.")] = "5,20",
    warmup: Annotated[int, typer.Option(help="Untimed calls per figure after the cold one.")] = 5,
    iterations: Annotated[int | None, typer.Option(help="Timed calls per figure (default 50).")] = None,
    duration: Annotated[float | None, typer.Option(help="Or: seconds of timed calls per figure.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the profile (or comparison) here.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write report.md and PNG plots into this directory.")] = None,
    compare: Annotated[
        tuple[Path, Path] | None, typer.Option(help="Compare two profile JSON files A B: ratios B/A per figure.")
    ] = None,
) -> None:
    """Time decode, preprocessing, backbone, prototypes, head adaptation, classification and gallery commit,
    and enroll/classify end to end, on every backend this machine has; or compare two saved profiles."""
    from metaedge import profiling

    try:
        if compare is not None:
            if report is not None:
                raise profiling.ProfileError("--report writes a profile's report; with --compare, use --json")
            doc = profiling.compare_files(*compare)
            profiling.print_comparison(doc, console)
        else:
            config = profiling.ProfileConfig(
                bundle=bundle, checkpoint=checkpoint, target=target,
                backends=tuple(backend) if backend else profiling.BACKEND_KINDS,
                batches=profiling.parse_counts(batch, "batch"), ways=profiling.parse_counts(ways, "ways"),
                shots=profiling.parse_counts(shots, "shots"), warmup=warmup,
                iterations=iterations if iterations is not None or duration is not None else 50, duration_s=duration,
            )  # fmt: skip
            with err_console.status("profiling") as status:
                doc = profiling.run_profile(config, lambda n, total, label: status.update(f"[{n}/{total}] {label}"))
            profiling.print_profile(doc, console)
            if report is not None:
                extra = ["--report", str(report)] + (["--json", str(json_path)] if json_path is not None else [])
                written = profiling.write_report(doc, report, config.command_line(*extra))
                console.print(f"report: {', '.join(str(p) for p in written)}", highlight=False)
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(profiling.dumps(doc))
            console.print(f"wrote {json_path}", highlight=False)
    except MetaedgeError as e:
        fail(str(e))
