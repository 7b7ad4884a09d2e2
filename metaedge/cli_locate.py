"""`metaedge locate`: find enrolled classes in scenes, print their boxes (or JSON with masks), draw overlays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from metaedge._console import console, fail
from metaedge.errors import MetaedgeError


def locate(
    scenes: Annotated[list[Path], typer.Argument(help="Scene images (any size; see metaedge/locate.py).")],
    label: Annotated[list[str] | None, typer.Option(help="Look for this enrolled class only; repeatable.")] = None,
    bundle: Annotated[Path | None, typer.Option(help="Localisation bundle; default: the shipped one.")] = None,
    store: Annotated[Path | None, typer.Option(help="Gallery database; default: $METAEDGE_STORE or ~/.local/share/"
                                                    "metaedge/gallery.db")] = None,  # fmt: skip
    threshold: Annotated[float | None, typer.Option(help="Presence threshold; default: the bundle's.")] = None,
    no_threshold: Annotated[bool, typer.Option("--no-threshold", help="Report every class as present.")] = False,
    overlay: Annotated[Path | None, typer.Option(help="Write NAME.overlay.png with masks and boxes here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON per scene and class; masks as RLE.")] = False,
) -> None:
    """Find the enrolled classes in each scene: score, presence, box and centre, best first (enroll references
    with `metaedge enroll LABEL REF.png --bundle` the same localisation bundle)."""
    from metaedge import bundle as bundle_io
    from metaedge.cli import _existing_store
    from metaedge.locate import render_overlay, require_task
    from metaedge.reference import bundle_path
    from metaedge.runtime import _MANIFEST_THRESHOLD, Runtime

    limit = None if no_threshold else (_MANIFEST_THRESHOLD if threshold is None else threshold)
    try:
        bundle = bundle or bundle_path("locate")
        require_task(bundle_io.load(bundle), "locate")  # before the gallery, which would name a model mismatch
        with Runtime(bundle, _existing_store(store), readonly=True) as rt:
            results = [rt.locate(scene, labels=label, threshold=limit) for scene in scenes]
        written = []
        if overlay is not None:
            overlay.mkdir(parents=True, exist_ok=True)
            for scene, found in zip(scenes, results):
                written.append(overlay / f"{scene.stem}.overlay.png")
                render_overlay(scene, found).save(written[-1])
    except (MetaedgeError, OSError) as e:
        fail(str(e))
    if as_json:
        print(json.dumps([{"scene": str(s), "found": [f.to_dict() for f in fs]} for s, fs in zip(scenes, results)]))
        return
    for scene, found in zip(scenes, results):
        for f in found:
            where = f"box {f.box} center ({f.center[0]:.1f}, {f.center[1]:.1f})" if f.box else "empty mask"  # noqa: E501
            console.print(f"{escape(str(scene))}\t{escape(f.label)}\tscore {f.score:.3f}\t"
                          f"{'present' if f.present else 'absent'}\t{where}",
                          highlight=False, soft_wrap=True)  # fmt: skip
    for path in written:
        console.print(f"wrote {escape(str(path))}", highlight=False)


def locate_demo(task: str, bundle: Path | None, *, way: int, seed: int, overlay: Path | None, as_json: bool) -> None:
    """`metaedge demo --task locate`: the library's run_locate_demo, printed."""
    from metaedge.demo_locate import run_locate_demo

    try:
        if task != "locate":
            raise MetaedgeError(f"--task is classify or locate, not {task!r}")
        r = run_locate_demo(bundle, way=way, seed=seed, overlay=overlay)
    except (MetaedgeError, OSError) as e:
        fail(str(e))
    if as_json:
        print(json.dumps(r.to_dict()))
        return
    t = r.locate_ms_per_scene
    console.print(f"[bold]{r.alphabet}[/], never seen in training: {r.way} characters enrolled from one drawing "
                  f"each, each found in a scene of {r.clutter} characters among all {r.way}")  # fmt: skip
    console.print(f"mask IoU [bold]{100 * r.iou:.1f}%[/], localisation (centre within 5 px) "
                  f"{100 * r.localisation:.1f}%, target ranked first {100 * r.top1:.1f}%")  # fmt: skip
    console.print(f"locate one scene against {r.way} classes (to answer): p50 {t['p50']:.2f} ms, p90 {t['p90']:.2f} ms")
    for path in r.overlays:
        console.print(f"wrote {escape(path)}", highlight=False)
    console.print(f"model {r.model_id}")
