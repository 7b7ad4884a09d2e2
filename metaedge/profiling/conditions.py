"""The conditions a profile was measured under: hardware, clocks, threads, library versions, the model."""

from __future__ import annotations

import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

import metaedge

ROOT = Path("/")
_GPU_DEVFREQ = re.compile(r"gpu|ga10b|gv11b|gp10b|gm20b", re.IGNORECASE)  # Orin, Xavier, TX2, Nano GPU nodes
_BUSY_GOVERNORS = ("powersave", "ondemand", "conservative", "schedutil")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip().rstrip("\x00").strip()
    except OSError:
        return None


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# The instruction-set extensions that decide which int8 kernels ONNX Runtime runs, and so how fast and how exact they
# are: x86 without VNNI adds u8 x s8 products in saturating 16-bit pairs (metaedge/ort.py asks for exact kernels
# there, at 1.25x the time); ARM's dot-product and matrix extensions do 8-bit products in 32 bits. The same CPU model
# name can come with or without them: the dev VM's CPU was "AMD EPYC" both when BENCHMARKS.md recorded AVX-512 and
# when it had AVX2 alone.
INT8_INSTRUCTIONS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")


def int8_instructions(cpuinfo: str) -> list[str]:
    """Which of INT8_INSTRUCTIONS /proc/cpuinfo's first `flags` (x86) or `Features` (ARM) line names, in that order."""
    found = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    have = set(found.group(1).split()) if found else set()
    return [name for name in INT8_INSTRUCTIONS if name in have]


def cpu_info(root: Path = ROOT) -> dict:
    """CPU model, its int8 instruction-set extensions, logical cores, the cores this process may use, and the load
    before the run."""
    model = None
    text = _read(root / "proc" / "cpuinfo") or ""
    for key in ("model name", "Model", "Hardware"):  # x86 names the CPU; many ARM kernels only name the board
        found = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if found:
            model = found.group(1).strip()
            break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {"model": model or platform.processor() or platform.machine(), "machine": platform.machine(),
            "int8_instructions": int8_instructions(text), "logical_cores": os.cpu_count(), "usable_cores": usable,
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "nice": os.nice(0) if hasattr(os, "nice") else None}  # fmt: skip


def is_jetson(root: Path = ROOT) -> bool:
    if (root / "etc" / "nv_tegra_release").is_file():
        return True
    return "jetson" in (_read(root / "proc" / "device-tree" / "model") or "").lower()


def _int(path: Path) -> int | None:
    text = _read(path)
    return int(text) if text is not None and text.isdigit() else None


def cpu_clocks(root: Path = ROOT) -> list[dict]:
    """Per CPU: current and maximum frequency (kHz) from cpufreq; empty where sysfs has none (VMs)."""
    out = []
    cpus = sorted((root / "sys" / "devices" / "system" / "cpu").glob("cpu[0-9]*"), key=lambda p: int(p.name[3:]))
    for cpu in cpus:
        freq = cpu / "cpufreq"
        cur = _int(freq / "scaling_cur_freq") or _int(freq / "cpuinfo_cur_freq")
        top = _int(freq / "cpuinfo_max_freq")
        if cur is not None and top is not None:
            out.append({"name": cpu.name, "cur_khz": cur, "max_khz": top})
    return out


def gpu_clocks(root: Path = ROOT) -> list[dict]:
    """Jetson GPU current and maximum frequency (Hz) from devfreq."""
    out = []
    for dev in sorted((root / "sys" / "class" / "devfreq").glob("*")):
        if not _GPU_DEVFREQ.search(dev.name):
            continue
        cur, top = _int(dev / "cur_freq"), _int(dev / "max_freq")
        if cur is not None and top is not None:
            out.append({"name": dev.name, "cur_hz": cur, "max_hz": top})
    return out


def jetson_info(root: Path = ROOT) -> dict:
    """Board, L4T release, power mode, and whether every CPU and the GPU run at their maximum clock.

    Unlocked clocks (DVFS) make the first calls of every figure slow and the rest noisy; `jetson_clocks`
    pins them. clocks_locked is None when sysfs shows no clocks to compare.
    """
    mode_text = _run(["nvpmodel", "-q"])
    power_mode = None
    if mode_text:
        found = re.search(r"Power Mode:\s*(.+)", mode_text)
        power_mode = found.group(1).strip() if found else mode_text.splitlines()[0]
    cpus, gpus = cpu_clocks(root), gpu_clocks(root)
    slow = [f"{c['name']} at {c['cur_khz'] / 1e3:.0f} of {c['max_khz'] / 1e3:.0f} MHz" for c in cpus
            if c["cur_khz"] < c["max_khz"]]  # fmt: skip
    slow += [f"GPU {g['name']} at {g['cur_hz'] / 1e6:.0f} of {g['max_hz'] / 1e6:.0f} MHz" for g in gpus
             if g["cur_hz"] < g["max_hz"]]  # fmt: skip
    return {
        "model": _read(root / "proc" / "device-tree" / "model"),
        "l4t_release": next(iter((_read(root / "etc" / "nv_tegra_release") or "").splitlines()), None),
        "power_mode": power_mode if mode_text else "unknown (nvpmodel not found or failed)",
        "cpu_clocks": cpus, "gpu_clocks": gpus,
        "clocks_locked": (not slow) if (cpus or gpus) else None,
        "not_at_max": slow,
    }  # fmt: skip


def governor(root: Path = ROOT) -> str | None:
    return _read(root / "sys" / "devices" / "system" / "cpu" / "cpu0" / "cpufreq" / "scaling_governor")


def gpu_info() -> list[dict]:
    """Every NVIDIA GPU nvidia-smi lists: name, driver, memory; empty without nvidia-smi."""
    text = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    gpus = []
    for line in (text or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory_total": parts[2]})
    return gpus


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Library versions, read without importing heavy modules (torch is only reported, not loaded)."""
    ort = _version("onnxruntime") or _version("onnxruntime-gpu")
    trt = _version("tensorrt")
    if trt is None and find_spec("tensorrt") is not None:  # JetPack installs it as a system module
        try:
            import tensorrt  # noqa: PLC0415

            trt = tensorrt.__version__
        except Exception:  # an installed but broken TensorRT is still a fact worth reporting
            trt = "installed, not importable"
    return {"metaedge": metaedge.__version__, "python": platform.python_version(), "numpy": _version("numpy"),
            "onnxruntime": ort, "torch": _version("torch"), "tensorrt": trt,
            "pillow": _version("pillow")}  # fmt: skip


def threads(ort_threads: int) -> dict:
    """Thread settings that change the figures: torch's pools (only if torch is loaded), ORT's, OpenMP's."""
    torch = sys.modules.get("torch")  # no import: a run without the torch backend must not pay for it
    return {
        "torch_intra_op": torch.get_num_threads() if torch is not None else None,
        "torch_inter_op": torch.get_num_interop_threads() if torch is not None else None,
        "onnxruntime_intra_op": ort_threads,
        "onnxruntime_intra_op_note": "0: ONNX Runtime's default, one thread per physical core" if ort_threads == 0
        else "set by the target profile",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
    }  # fmt: skip


def storage(path: Path) -> dict:
    """Where the temporary galleries live, and its filesystem: a commit's fsync costs what the medium costs."""
    path = path.resolve()
    best, fs = "", None
    for line in (_read(Path("/proc/mounts")) or "").splitlines():
        parts = line.split()
        if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
            best, fs = parts[1], parts[2]
    return {"path": str(path), "mount": best or None, "filesystem": fs}


def cpu_snapshot(root: Path = ROOT) -> dict | None:
    """Busy CPU seconds of the whole machine (/proc/stat) and of this process, and the wall clock, now."""
    fields = ((_read(root / "proc" / "stat") or "").splitlines() or [""])[0].split()
    if len(fields) < 8 or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {"busy_s": (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK"),
            "steal_s": steal / os.sysconf("SC_CLK_TCK"), "own_s": own.ru_utime + own.ru_stime,
            "wall_s": time.monotonic()}  # fmt: skip


def contention(before: dict | None, after: dict | None, cores: int) -> dict | None:
    """What other processes (and, on a VM, the hypervisor) took of the CPU while the profile ran.

    others_share: their busy time over wall time x cores; 0 on an otherwise idle machine. The load average
    before the run cannot see a job that starts half-way through; this can.
    """
    if before is None or after is None:
        return None
    wall = after["wall_s"] - before["wall_s"]
    others = max(0.0, (after["busy_s"] - before["busy_s"]) - (after["own_s"] - before["own_s"]))
    steal = after["steal_s"] - before["steal_s"]
    return {"wall_s": wall, "own_cpu_s": after["own_s"] - before["own_s"], "others_cpu_s": others,
            "steal_s": steal, "others_share": others / (wall * cores) if wall > 0 else 0.0,
            "steal_share": steal / (wall * cores) if wall > 0 else 0.0}  # fmt: skip


def contention_warnings(c: dict | None) -> list[str]:
    if c is None:
        return []
    out = []
    if c["others_share"] > 0.1:
        out.append(
            f"other processes used {100 * c['others_share']:.0f}% of the CPU while the profile ran "
            f"({c['others_cpu_s']:.1f} CPU-s in {c['wall_s']:.1f} s): the figures include their interference"
        )
    if c["steal_share"] > 0.05:
        out.append(f"the hypervisor took {100 * c['steal_share']:.0f}% of the CPU time (steal) during the run")
    return out


def collect(root: Path = ROOT) -> tuple[dict, list[str]]:
    """Hardware and clock conditions, and the warnings they call for (shared CPU, unlocked clocks, ...)."""
    warnings: list[str] = []
    cpu = cpu_info(root)
    load, cores = cpu["load_average_1m"], cpu["usable_cores"] or 1
    if load is not None and load > 0.5 * cores:
        warnings.append(
            f"load average {load:.2f} on {cores} usable core(s) before the run: other processes compete for the "
            "CPU, so the figures are slower and noisier than on an idle machine"
        )
    conditions = {"os": platform.platform(), "cpu": cpu, "gpus": gpu_info(), "jetson": None, "cpu_governor": None}
    if is_jetson(root):
        info = jetson_info(root)
        conditions["jetson"] = info
        if info["clocks_locked"] is False:
            warnings.append("clocks are not locked (" + "; ".join(info["not_at_max"]) + "): run `sudo jetson_clocks` "
                            "(and pick the power mode with `sudo nvpmodel -m N`) for stable figures")  # fmt: skip
        elif info["clocks_locked"] is None:
            warnings.append("Jetson clocks could not be read from sysfs: whether they are locked is unknown")
    else:
        gov = governor(root)
        conditions["cpu_governor"] = gov or "not readable (no cpufreq in sysfs, e.g. a virtual machine)"
        if gov in _BUSY_GOVERNORS:
            warnings.append(f"CPU frequency governor is {gov!r}: frequency scaling adds noise; "
                            "'performance' gives steadier figures")  # fmt: skip
    return conditions, warnings
