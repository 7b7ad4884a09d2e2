"""A profile as a Markdown report with PNG plots: per-stage latency bars and the backbone's distribution."""

from __future__ import annotations

import os
from pathlib import Path

from metaedge.profiling.table import FIGURE_COLUMNS, figure_row

STAGE_PLOT, BACKBONE_PLOT = "stages.png", "backbone.png"


def _int8(found: list[str] | None) -> str:
    """The CPU's int8 extensions as a profile records them; profiles from before metaedge recorded them have none."""
    if found is None:
        return "not recorded"
    return ", ".join(found) or "none that ONNX Runtime's int8 kernels use"


def _figure(width: float, height: float):
    # The object API with no pyplot: no global backend switch, no GUI, nothing kept alive between calls.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _label(f: dict) -> str:
    shape = ", ".join(f"{k[0]}={f[k]}" for k in ("batch", "ways", "shots") if f[k] is not None)
    return f"{f['stage']} · {f['backend']} · {shape}"


def plot_stages(doc: dict, path: Path) -> None:
    """Horizontal bars of every figure's p50, whiskers up to its p90; log scale (stages span 4 decades)."""
    figures = doc["figures"]
    stages = list(dict.fromkeys(f["stage"] for f in figures))
    fig = _figure(10, 1.5 + 0.26 * len(figures))
    ax = fig.subplots()
    colours = {s: f"C{i % 10}" for i, s in enumerate(stages)}
    y = range(len(figures))
    p50 = [max(f["p50_ms"], 1e-4) for f in figures]
    upper = [max(f["p90_ms"] - f["p50_ms"], 0.0) for f in figures]
    ax.barh(y, p50, xerr=[[0.0] * len(figures), upper], color=[colours[f["stage"]] for f in figures],
            error_kw={"capsize": 2, "elinewidth": 1})  # fmt: skip
    ax.set_yticks(list(y), [_label(f) for f in figures], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("latency per call, ms (bar: p50, whisker: p90; log scale)")
    ax.set_title(f"{doc['conditions']['model']['model_id']}: latency per stage", fontsize=10)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.savefig(path, dpi=110)


def plot_backbone(doc: dict, path: Path) -> bool:
    """Box plots of the backbone's timed calls, one panel per backend, one box per batch size."""
    by_backend: dict[str, list[dict]] = {}
    for f in doc["figures"]:
        if f["stage"] == "backbone" and f.get("samples_ms"):
            by_backend.setdefault(f["backend"], []).append(f)
    if not by_backend:
        return False
    fig = _figure(max(6.0, 4.2 * len(by_backend)), 3.8)
    axes = fig.subplots(1, len(by_backend), squeeze=False, sharey=True)[0]  # one scale: backends compare by eye
    for ax, (backend, figures) in zip(axes, by_backend.items()):
        ax.boxplot([f["samples_ms"] for f in figures], tick_labels=[str(f["batch"]) for f in figures],
                   whis=(1, 99), flierprops={"markersize": 2})  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("ms per call")
        ax.set_title(f"backbone · {backend} (n={figures[0]['iterations']})", fontsize=9)
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.suptitle("backbone latency distribution (box: quartiles, whiskers: p1-p99)", fontsize=10)
    fig.savefig(path, dpi=110)
    return True


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _busy(c: dict | None) -> str:
    if not c:
        return "unknown (no /proc/stat)"
    return (f"{100 * c['others_share']:.1f}% of the CPU ({c['others_cpu_s']:.1f} CPU-s in {c['wall_s']:.1f} s); "
            f"hypervisor steal {100 * c['steal_share']:.1f}%")  # fmt: skip


def _flags(flags: dict) -> str:
    return ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()) or "-"


def _where(storage: dict | None) -> str:
    if not storage:
        return "-"
    return f"{storage['path']} ({storage.get('filesystem') or 'unknown filesystem'} mounted at {storage.get('mount')})"


def _md_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(doc: dict, command: str | None = None, backbone_plot: bool = True) -> str:
    c, o, m = doc["conditions"], doc["overhead"], doc["memory"]
    cfg = doc["config"]
    cpu, model, target = c["cpu"], c["model"], c["target"]
    runs = (f"{cfg['iterations']} timed calls" if cfg["iterations"] is not None
            else f"{cfg['duration_s']} s of timed calls")  # fmt: skip
    out = [f"# Latency profile: `{model['model_id']}`", ""]
    out += [f"Measured {doc['created']} on **{cpu['model']}** ({cpu['usable_cores']} usable of "
            f"{cpu['logical_cores']} logical cores) with target profile `{target['name']}` "
            f"(the bundle's own: `{c.get('bundle_target')}`). Per figure: one cold call, {cfg['warmup']} warm-up "
            f"calls, then {runs}. Clock: {c['timing_method']}.", ""]  # fmt: skip
    if command:
        out += ["```", command, "```", ""]
    out += [f"Timing overhead, a no-op stage through the same machinery: p50 {o['p50_ms'] * 1e3:.2f} µs, "
            f"p99 {o['p99_ms'] * 1e3:.2f} µs ({o['iterations']} calls): the floor under every figure.", ""]  # fmt: skip
    if doc["warnings"]:
        out += ["## Warnings", ""] + [f"- {w}" for w in doc["warnings"]] + [""]
    out += ["## Backends", ""]
    rows = []
    for b in doc["backends"]:
        extra = {k: v for k, v in b.items() if k not in ("name", "kind", "status", "reason", "gpu")}
        detail = b["reason"] if b["status"] != "ok" else ", ".join(f"{k} {v}" for k, v in extra.items())
        rows.append([b["name"], b["kind"], b["status"], "GPU" if b["gpu"] else "host", detail])
    out += [_md_table(["backend", "kind", "status", "device", "detail or reason"], rows), ""]
    out += ["## Stages", ""]
    out += [_md_table(["stage", "one call", "status"],
                      [[s["name"], s["description"], s["status"] + (f": {s['reason']}" if s["reason"] else "")]
                       for s in doc["stages"]]), ""]  # fmt: skip
    out += ["## Figures", "", f"![p50 per stage, whiskers to p90]({STAGE_PLOT})", ""]
    out += ["Times in ms per call; `cold` is the first call (see the stage's description for what it includes); "
            "the other columns summarise the timed calls after the warm-up. items/s counts images, or support "
            "images for per-class stages.", ""]  # fmt: skip
    out += [_md_table(FIGURE_COLUMNS, [figure_row(f) for f in doc["figures"]]), ""]
    if backbone_plot:
        out += ["## Backbone latency distribution", "", f"![backbone distribution]({BACKBONE_PLOT})", ""]
    out += ["## Memory", ""]
    out += [f"- peak resident memory of the profiling process (ru_maxrss): {m['peak_rss_mib']:.0f} MiB "
            f"({m.get('rss_at_start_mib', 0):.0f} MiB at the start of the run)"]  # fmt: skip
    out += [f"- after {r['after']}: {r['peak_rss_mib']:.0f} MiB" for r in m["rss_after"]]
    gpu = m["gpu"]
    out += [
        f"- GPU {gpu['device']}: {gpu['max_memory_allocated_mib']:.0f} MiB allocated by PyTorch at most; "
        f"{gpu.get('device_used_mib', 0):.0f} MiB in use on the device"
        if gpu
        else "- GPU: no GPU backend ran"
    ]
    out += ["", "## Conditions", ""]
    t, v = c["threads"], c["versions"]
    out += [f"- model `{model['model_id']}`: {model.get('backbone')} backbone, input {model.get('input')}, "
            f"{model.get('embedding_dim')}-d embeddings, metric {model.get('metric')}; bundle {model.get('bundle')}",
            f"- target profile `{target['name']}`: providers {', '.join(target['onnxruntime_providers'])}, "
            f"threads {target.get('threads')}, max batch {target.get('max_batch')}",
            f"- CPU: {cpu['model']} ({cpu.get('machine')}; int8 instructions: {_int8(cpu.get('int8_instructions'))}), "
            f"1-minute load average {_num(cpu.get('load_average_1m'))} "
            f"before the run; frequency governor: {c['cpu_governor'] or '-'}; this process's nice value "
            f"{cpu.get('nice', '-')}",
            f"- threads: torch intra-op {t['torch_intra_op']}, ONNX Runtime intra-op {t['onnxruntime_intra_op']} "
            f"({t.get('onnxruntime_intra_op_note')}), OMP_NUM_THREADS {t['OMP_NUM_THREADS'] or 'unset'}",
            "- GPUs: " + (", ".join(f"{g['name']} (driver {g['driver']})" for g in c["gpus"]) or "none found"),
            "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
            f"- other processes during the run: {_busy(c.get('contention'))}",
            f"- kernels: {_flags(c.get('kernels') or {})}",
            f"- temporary galleries on: {_where(c.get('storage'))}"]  # fmt: skip
    j = c["jetson"]
    if j:
        out += [f"- Jetson {j.get('model')}: {j.get('l4t_release')}; power mode {j['power_mode']}; "
                f"clocks locked: {j['clocks_locked']}"]  # fmt: skip
    out += [f"- samples: {c['samples']['images']} images of {c['samples']['classes']} classes from "
            f"{c['samples']['path']}" if c.get("samples") else ""]  # fmt: skip
    return "\n".join(out).rstrip() + "\n"


def write_report(doc: dict, out: str | os.PathLike, command: str | None = None) -> list[Path]:
    """Write report.md, stages.png and (when backbone samples exist) backbone.png into `out`; return the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / STAGE_PLOT]
    plot_stages(doc, written[0])
    if plot_backbone(doc, out / BACKBONE_PLOT):
        written.append(out / BACKBONE_PLOT)
    report = out / "report.md"
    report.write_text(markdown(doc, command, backbone_plot=len(written) > 1))
    return [report, *written]
