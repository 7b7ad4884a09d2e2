"""Profiles and comparisons as terminal tables (rich); the same columns feed the Markdown report."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

PIPE_WIDTH = 200  # written to a file or a pipe, the table keeps every column whole instead of eliding digits

FIGURE_COLUMNS = ("stage", "backend", "batch", "ways", "shots", "cold ms", "p50 ms", "p90 ms", "p99 ms", "max ms",
                  "mean ± std ms", "items/s", "n")  # fmt: skip
COMPARISON_COLUMNS = ("stage", "backend", "batch", "ways", "shots", "A p50 ms", "B p50 ms", "B/A p50", "A mean ms",
                      "B mean ms", "B/A mean")  # fmt: skip


def ms(value: float | None) -> str:
    """Three significant digits, never in exponent notation."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if value >= 0.001 else f"{value:.4f}"


def _shape(v: int | None) -> str:
    return "-" if v is None else str(v)


def figure_row(f: dict) -> list[str]:
    rate = f["throughput_per_s"]
    return [f["stage"], f["backend"], _shape(f["batch"]), _shape(f["ways"]), _shape(f["shots"]), ms(f["cold_ms"]),
            ms(f["p50_ms"]), ms(f["p90_ms"]), ms(f["p99_ms"]), ms(f["max_ms"]),
            f"{ms(f['mean_ms'])} ± {ms(f['std_ms'])}", "-" if rate is None else f"{rate:,.0f}",
            str(f["iterations"])]  # fmt: skip


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def comparison_row(r: dict) -> list[str]:
    return [r["stage"], r["backend"], _shape(r["batch"]), _shape(r["ways"]), _shape(r["shots"]), ms(r["a_p50_ms"]),
            ms(r["b_p50_ms"]), ratio(r["p50_ratio"]), ms(r["a_mean_ms"]), ms(r["b_mean_ms"]),
            ratio(r["mean_ratio"])]  # fmt: skip


def _table(title: str, columns: tuple[str, ...], numeric_from: int) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, name in enumerate(columns):
        table.add_column(name, justify="right" if i >= numeric_from else "left", no_wrap=True)
    return table


def _print_table(table: Table, console: Console) -> None:
    if not console.is_terminal and console.width < PIPE_WIDTH:
        # Console.print caps `width` at the console's own; a wider console on the same file does not.
        console = Console(file=console.file, width=PIPE_WIDTH, color_system=None, highlight=False)
    needed = Measurement.get(console, console.options.update_width(PIPE_WIDTH), table).maximum
    if console.width < needed:
        # Narrower than the table: rich would cut every figure to "0…" to fit; whole figures on
        # lines the terminal wraps are worth more (a wider window, or `less -S`, shows the table as it is).
        console = Console(file=console.file, width=needed, force_terminal=console.is_terminal,
                          color_system=console.color_system, highlight=False)  # fmt: skip
    console.print(table)


def print_profile(doc: dict, console: Console) -> None:
    """Every figure, then the backends and stages that did not run (with why), overhead, memory, warnings."""
    c = doc["conditions"]
    table = _table(f"{c['model']['model_id']} on {c['cpu']['model']} ({c['timing_method']})", FIGURE_COLUMNS, 2)
    previous = None
    for f in doc["figures"]:
        if previous is not None and f["stage"] != previous:
            table.add_section()
        previous = f["stage"]
        table.add_row(*figure_row(f))
    _print_table(table, console)
    for b in doc["backends"]:
        if b["status"] != "ok":
            console.print(f"[yellow]skipped[/] backend {b['name']}: {b['reason']}", highlight=False)
    for s in doc["stages"]:
        if s["status"] != "ok":
            colour = "red" if s["status"] == "error" else "yellow"
            console.print(f"[{colour}]{s['status']}[/] stage {s['name']}: {s['reason']}", highlight=False)
    o, m = doc["overhead"], doc["memory"]
    console.print(f"timing overhead (no-op stage): p50 {o['p50_ms'] * 1e3:.2f} µs, p99 {o['p99_ms'] * 1e3:.2f} µs")
    gpu = m["gpu"]
    console.print(f"peak resident memory {m['peak_rss_mib']:.0f} MiB"
                  + (f"; GPU {gpu['device']}: {gpu['max_memory_allocated_mib']:.0f} MiB allocated by PyTorch"
                     if gpu else ""), highlight=False)  # fmt: skip
    for w in doc["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)


def print_comparison(doc: dict, console: Console) -> None:
    a, b = doc["a"], doc["b"]
    table = _table(f"B/A: A = {a['path']} ({a['model_id']}), B = {b['path']} ({b['model_id']})",
                   COMPARISON_COLUMNS, 2)  # fmt: skip
    for r in doc["rows"]:
        cells = comparison_row(r)
        p = r["p50_ratio"]
        if p is not None and not 0.9 <= p <= 1.1:  # a 10% move is past the run-to-run noise of a quiet machine
            cells[7] = f"[{'red' if p > 1 else 'green'}]{cells[7]}[/]"
        table.add_row(*cells)
    _print_table(table, console)
    for side in ("a", "b"):
        missing = doc[f"only_in_{side}"]
        if missing:
            names = ", ".join(sorted({f"{k['stage']} {k['backend']}" for k in missing}))
            console.print(f"{len(missing)} figure(s) only in {side.upper()}: {names}", highlight=False)
    for d in doc["conditions_differ"]:
        console.print(f"[yellow]differs:[/] {d['what']}: A {d['a']}, B {d['b']}", highlight=False)
