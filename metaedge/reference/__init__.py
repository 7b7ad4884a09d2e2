"""The bundles shipped with metaedge: one per task, found by `bundle_path`."""

from __future__ import annotations

from pathlib import Path

from metaedge.errors import MetaedgeError

HERE = Path(__file__).resolve().parent
BUNDLES = {"classify": HERE / "bundle", "locate": HERE / "locate_bundle"}


def bundle_path(task: str = "classify") -> Path:
    """The shipped bundle of `task`: "classify" (the default bundle, characters alone) or "locate" (classes in
    cluttered scenes: metaedge/locate.py). MetaedgeError names the tasks for anything else."""
    if task not in BUNDLES:
        raise MetaedgeError(f"no shipped bundle for task {task!r}; choose one of {', '.join(map(repr, BUNDLES))}")
    if not (BUNDLES[task] / "manifest.json").is_file():  # a checkout whose bundle of this task is not made yet
        raise MetaedgeError(f"this metaedge ships no {task} bundle yet ({BUNDLES[task]}); export one from a "
                            "segmentation run (metaedge export RUN --out DIR) and pass it as the bundle")  # fmt: skip
    return BUNDLES[task]
