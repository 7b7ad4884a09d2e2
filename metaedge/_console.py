"""Terminal output shared by the CLI commands: errors, progress bars, result tables."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """One line on stderr naming the problem, then a non-zero exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


@contextlib.contextmanager
def training_progress(total: int, enabled: bool = True) -> Iterator[tuple]:
    """A progress bar with live loss, accuracy and episodes per second.

    Yields the callbacks (on_step, on_validate, on_pretrain); pre-training epochs print one line each. The bar
    appears with the first episode: an error in the settings or the data before that prints no bar at all.
    """
    progress = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.3f}  {task.fields[eps]:.1f} ep/s"),
        TextColumn("{task.fields[val]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=not enabled,
    )
    task = progress.add_task("train", total=total, loss=0.0, acc=0.0, eps=0.0, val="")
    state = {"first": None}

    def on_step(stats) -> None:
        if state["first"] is None:
            progress.start()
            state["first"] = (stats.episode - 1, progress.get_time())
            progress.update(task, completed=stats.episode - 1)
        done0, t0 = state["first"]
        rate = (stats.episode - done0) / max(progress.get_time() - t0, 1e-9)
        progress.update(task, completed=stats.episode, loss=stats.loss, acc=stats.accuracy, eps=rate)

    def on_validate(episode: int, result) -> None:
        progress.update(task, val=f"val {100 * result.accuracy:.1f}±{100 * result.ci95:.1f}%")

    def on_pretrain(stats) -> None:
        if enabled:
            progress.console.print(f"pretrain epoch {stats.epoch}: loss {stats.loss:.3f}  acc {stats.accuracy:.3f}")

    try:
        yield on_step, on_validate, on_pretrain
    finally:
        if state["first"] is not None:
            progress.stop()
