"""`run_profile`: time every stage of a bundle on this machine and return the profile (a JSON-ready dict)."""

from __future__ import annotations

import contextlib
import resource
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from metaedge import bundle as bundle_io
from metaedge import kernels
from metaedge.ort import create_session
from metaedge.profiling import backends as backends_mod
from metaedge.profiling import conditions as conditions_mod
from metaedge.profiling.config import ProfileConfig
from metaedge.profiling.schema import KIND, SCHEMA_VERSION, validate
from metaedge.profiling.stages import STAGES, Plan
from metaedge.profiling.timer import CUDA_CLOCK, HOST_CLOCK, measure, overhead, statistics
from metaedge.profiling.workload import load as load_workload
from metaedge.runtime import REFERENCE_BUNDLE
from metaedge.targets import get_target

Progress = Callable[[int, int, str], None]  # (figures done, figures in all, the next figure's label)
_CPU_TARGET = {"name": "cpu", "onnxruntime_providers": ["CPUExecutionProvider"], "threads": 0, "max_batch": 64}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far: ru_maxrss is KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _cuda_sync(backends: list) -> Callable[[], None] | None:
    """torch.cuda.synchronize when a GPU backend will run and torch sees the GPU; None otherwise."""
    if not any(b.status == "ok" and b.gpu for b in backends):
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.synchronize if torch.cuda.is_available() else None


def _gpu_memory() -> dict | None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return {"device": torch.cuda.get_device_name(),
            "max_memory_allocated_mib": torch.cuda.max_memory_allocated() / (1 << 20),
            "device_used_mib": (total - free) / (1 << 20), "device_total_mib": total / (1 << 20),
            "note": "max_memory_allocated counts PyTorch's allocator only; device_used_mib (all processes, "
                    "ONNX Runtime and TensorRT included) is read at the end of the run"}  # fmt: skip


def run_profile(config: ProfileConfig, progress: Progress | None = None) -> dict:
    """Measure every stage of `config.bundle` (see STAGES) with every backend that runs here.

    Returns the profile: a dict that validates against profile.schema.json (checked before returning).
    Raises MetaedgeError for a bundle, checkpoint, target or sample folder that cannot be used.
    """
    started = datetime.now(timezone.utc)
    rss_at_start = peak_rss_mib()
    conditions, warnings = conditions_mod.collect()  # first: the load average must not include our own work
    cpu_before = conditions_mod.cpu_snapshot()
    bundle = bundle_io.load(config.bundle or REFERENCE_BUNDLE)
    bundle_target = bundle.manifest.get("target") or _CPU_TARGET
    target = get_target(config.target).to_dict() if config.target else bundle_target
    backends, more = backends_mod.resolve(bundle, target, config.backends, config.checkpoint)
    warnings += more
    sync = _cuda_sync(backends)

    session = create_session(bundle.onnx_path, tuple(target.get("onnxruntime_providers") or ()),
                             int(target.get("threads", 0)))  # fmt: skip
    workload = load_workload(config.samples, bundle.preprocess, session, int(target.get("max_batch", 64)),
                             max(config.ways), max(config.shots))  # fmt: skip
    del session
    timing_args = {"warmup": config.warmup, "iterations": config.iterations, "duration_s": config.duration_s}
    figures, rss_after = [], []
    with tempfile.TemporaryDirectory(prefix="metaedge-profile-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        plan = Plan(bundle, target, config, workload, backends, workdir, stack, sync)
        jobs, stage_status = plan.jobs()
        cost = overhead()
        failed: set[str] = set()
        for n, job in enumerate(jobs):
            if progress is not None:
                progress(n, len(jobs), job.label())
            if job.stage in failed:
                continue
            try:
                timing = measure(job.setup(), sync=job.sync, **timing_args)
            except Exception as e:
                if not job.fragile:
                    raise
                # A kernel still being written must not cost the other figures: its stage is marked failed.
                stage_status[job.stage] = ("error", f"{type(e).__name__}: {e}")
                failed.add(job.stage)
                continue
            backend = job.backend if isinstance(job.backend, str) else job.backend()
            figures.append({"stage": job.stage, "backend": backend, "batch": job.batch, "ways": job.ways,
                            "shots": job.shots, **statistics(timing, job.items),
                            "samples_ms": [round(v / 1e6, 6) for v in timing.samples_ns.tolist()]})  # fmt: skip
            if job.stage == "backbone":
                rss_after.append({"after": f"backbone {backend} batch {job.batch}", "peak_rss_mib": peak_rss_mib()})
        storage = conditions_mod.storage(workdir)
        if progress is not None:
            progress(len(jobs), len(jobs), "done")
    for name in [n for n in STAGES if n in failed]:
        figures = [f for f in figures if f["stage"] != name]

    busy = conditions_mod.contention(cpu_before, conditions_mod.cpu_snapshot(), conditions["cpu"]["usable_cores"] or 1)
    warnings += conditions_mod.contention_warnings(busy)
    gpu_ran = sync is not None
    conditions.update({
        "timing_method": (f"{CUDA_CLOCK} for GPU backends; {HOST_CLOCK} for host stages" if gpu_ran else HOST_CLOCK),
        "threads": conditions_mod.threads(int(target.get("threads", 0))),
        "versions": conditions_mod.versions(),
        "kernels": {"native": kernels.native_available(), "cuda": kernels.cuda_available(),
                    "adapt_head": hasattr(kernels, "adapt_head")},
        "model": {"model_id": bundle.model_id, "bundle": str(bundle.path),
                  "backbone": bundle.manifest["backbone"]["name"], "embedding_dim": bundle.embedding_dim,
                  "metric": bundle.metric,
                  "input": [bundle.preprocess.channels, bundle.preprocess.size, bundle.preprocess.size],
                  "adaptation": bundle.manifest.get("adaptation")},
        "target": target, "bundle_target": bundle_target.get("name"), "storage": storage, "contention": busy,
        "samples": {"path": str(config.samples), "classes": len(workload.classes), "images": len(workload.paths)},
    })  # fmt: skip
    doc = {
        "kind": KIND, "schema_version": SCHEMA_VERSION, "created": started.isoformat(timespec="seconds"),
        "config": config.to_dict(), "conditions": conditions, "warnings": warnings,
        "backends": [b.to_dict() for b in backends],
        "stages": [{"name": name, "description": STAGES[name], "status": stage_status[name][0],
                    "reason": stage_status[name][1]} for name in STAGES],
        "figures": figures,
        "memory": {"peak_rss_mib": peak_rss_mib(), "rss_at_start_mib": rss_at_start, "rss_after": rss_after,
                   "gpu": _gpu_memory() if gpu_ran else None},
        "overhead": cost,
    }  # fmt: skip
    validate(doc)
    return doc
