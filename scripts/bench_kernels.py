#!/usr/bin/env python
"""Times metaedge's native kernels against PyTorch eager and the numpy reference, and prints measured ratios.

    python scripts/bench_kernels.py [--quick] [--json PATH]

1. adapt_head, 5-way 5-shot, D=64, 100 steps: native CPU vs the same loop in PyTorch eager (torch.optim.SGD on
   F.cross_entropy, zero init); target >= 100x.
2. adapt_head, 100-way 10-shot, D=512, 100 steps: native CPU vs PyTorch eager; target >= 1.0x (no slower), and
   GFLOP/s against the CPU's theoretical peak (from /proc/cpuinfo and a stated clock) and a measured practical peak
   (a large torch.matmul).
3. adapt_head on CUDA, 5-way 5-shot, D=64, 100 steps, vs PyTorch eager CUDA; target >= 50x (skipped without a GPU
   or without the CUDA kernels, with the reason).
4. prototypes and logits for a 20-way 5-shot episode (15 queries a class, D=64): native vs numpy reference vs torch.
Every figure is measured in this run; timings are medians. Other processes on the machine slow both sides alike
only roughly: run it on a quiet machine, or several times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from metaedge import kernels


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 3, sync: Callable[[], None] | None = None):
    """Median wall time of fn() over `repeats` calls, after `warmup` untimed ones; sync() fences device work."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def support_set(seed: int, n: int, c: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.concatenate([np.arange(c), rng.integers(0, c, n - c)]))
    centres = rng.standard_normal((c, d)).astype(np.float32)
    return centres[labels] + rng.standard_normal((n, d)).astype(np.float32), labels


def torch_adapt_head(x: torch.Tensor, y: torch.Tensor, c: int, steps: int, lr: float):
    """The loop adapt_head(init="zeros", weight_decay=0) runs, in PyTorch eager: SGD on mean cross-entropy."""
    w = torch.zeros(c, x.shape[1], device=x.device, requires_grad=True)
    b = torch.zeros(c, device=x.device, requires_grad=True)
    sgd = torch.optim.SGD([w, b], lr=lr)
    for _ in range(steps):
        sgd.zero_grad(set_to_none=True)
        F.cross_entropy(x @ w.T + b, y).backward()
        sgd.step()
    return w.detach(), b.detach()


# ---- the machine ----------------------------------------------------------------------------------------------


def cpu_info() -> dict:
    """Model, family/model numbers, flags and clock from /proc/cpuinfo (Linux); what is missing stays None."""
    info: dict = {"model": platform.processor() or None, "family": None, "model_number": None, "mhz": None}
    flags: set[str] = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "model name" and info["model"] in (None, "", platform.processor()):
            info["model"] = value
        elif key == "cpu family" and info["family"] is None:
            info["family"] = int(value)
        elif key == "model" and info["model_number"] is None:
            info["model_number"] = int(value)
        elif key == "cpu MHz" and info["mhz"] is None:
            info["mhz"] = float(value)
        elif key == "flags" and not flags:
            flags = set(value.split())
    info["flags"] = sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))
    info["vendor_amd"] = "AMD" in (info["model"] or "")
    return info


def busy_cores(interval: float = 0.5) -> float | None:
    """Cores' worth of CPU time other processes used over `interval` seconds (from /proc/stat; None elsewhere).
    Unlike the load average, which trails by a minute, this is what the next measurement competes with."""

    def totals() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields[:8]), fields[3] + fields[4]  # all time, idle + iowait

    try:
        total0, idle0 = totals()
        time.sleep(interval)
        total1, idle1 = totals()
    except (OSError, ValueError, IndexError):
        return None
    cores = os.cpu_count() or 1
    return cores * (1.0 - (idle1 - idle0) / max(total1 - total0, 1))


def flops_per_cycle(info: dict) -> tuple[int, str]:
    """FP32 FLOP per cycle per core from the vendor, family and ISA flags, and the assumption behind it."""
    flags = set(info["flags"])
    avx512 = "avx512f" in flags
    if "fma" not in flags:
        return 8, "no FMA: assumed one 4-lane multiply and one 4-lane add a cycle"
    if info["vendor_amd"] and info["family"] == 25:
        if avx512:
            return 32, "AMD family 25 with AVX-512: Zen 4, 2 FMA pipes x 8 fp32 lanes x 2 (512-bit ops double-pumped)"
        return 32, "AMD family 25 without AVX-512: Zen 3, 2 FMA pipes x 8 fp32 lanes x 2"
    if info["vendor_amd"] and info["family"] == 26 and avx512:
        return 64, "AMD family 26: Zen 5, 2 FMA pipes x 16 fp32 lanes x 2 (full-width AVX-512)"
    if avx512:
        return 64, "AVX-512: 2 FMA units x 16 fp32 lanes x 2 (two-unit server core assumed)"
    return 32, "AVX2: 2 FMA units x 8 fp32 lanes x 2"


def practical_peak_gflops(size: int, repeats: int) -> tuple[float, str]:
    """The faster of numpy's and torch's float32 (size, size) matmul (their BLAS: OpenBLAS, MKL), best of `repeats`:
    GFLOP/s, and which library gave it."""
    a = np.random.default_rng(5).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(6).standard_normal((size, size), dtype=np.float32)
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    rates = {}
    for name, fn in (("numpy", lambda: a @ b), ("torch", lambda: at @ bt)):
        best = min(median_seconds(fn, 1, warmup=1 if i == 0 else 0) for i in range(repeats))
        rates[name] = 2.0 * size**3 / best / 1e9
    winner = max(rates, key=rates.get)
    how = f"{winner} matmul {size}x{size} float32, best of {repeats}"
    return rates[winner], f"{how} (numpy {rates['numpy']:.0f}, torch {rates['torch']:.0f} GFLOP/s)"


# ---- the benchmarks -------------------------------------------------------------------------------------------


def bench_small_cpu(repeats_native: int, repeats_torch: int) -> dict:
    n_way, shot, d, steps, lr = 5, 5, 64, 100, 0.5
    x, y = support_set(0, n_way * shot, n_way, d)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    ours = median_seconds(lambda: kernels.adapt_head(x, y, n_way, steps, lr, init="zeros", backend="native"),
                          repeats_native)  # fmt: skip
    theirs = median_seconds(lambda: torch_adapt_head(xt, yt, n_way, steps, lr), repeats_torch)
    w, _ = kernels.adapt_head(x, y, n_way, steps, lr, init="zeros", backend="native")
    w_torch, _ = torch_adapt_head(xt, yt, n_way, steps, lr)
    return {
        "shape": f"{n_way}-way {shot}-shot, D={d}, {steps} steps",
        "native_ms": ours * 1e3,
        "torch_ms": theirs * 1e3,
        "speedup": theirs / ours,
        "target": 100.0,
        "max_abs_diff_vs_torch": float(np.abs(w - w_torch.numpy()).max()),
        "repeats": {"native": repeats_native, "torch": repeats_torch},
    }


def bench_large_cpu(repeats: int, peak: dict) -> dict:
    n_way, shot, d, steps, lr = 100, 10, 512, 100, 0.5
    n = n_way * shot
    x, y = support_set(1, n, n_way, d)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    ours = median_seconds(lambda: kernels.adapt_head(x, y, n_way, steps, lr, init="zeros", backend="native"),
                          repeats, warmup=1)  # fmt: skip
    theirs = median_seconds(lambda: torch_adapt_head(xt, yt, n_way, steps, lr), repeats, warmup=1)
    flop = 4.0 * n * n_way * d * steps  # X W^T and G^T X, 2 * N * C * D each a step; softmax and updates left out
    gflops = flop / ours / 1e9
    return {
        "shape": f"{n_way}-way {shot}-shot, D={d}, {steps} steps",
        "native_ms": ours * 1e3,
        "torch_ms": theirs * 1e3,
        "speedup": theirs / ours,
        "target": 1.0,
        "gflop": flop / 1e9,
        "native_gflops": gflops,
        "torch_gflops": flop / theirs / 1e9,
        "fraction_of_theoretical_peak": gflops / peak["theoretical_gflops"],
        "fraction_of_practical_peak": gflops / peak["practical_gflops"],
        "repeats": repeats,
    }


def bench_small_cuda(repeats_native: int, repeats_torch: int) -> dict:
    if not kernels.native_available() or not kernels._C.cuda_built():
        return {"skipped": "metaedge._C was built without the CUDA kernels (no nvcc when built, or METAEDGE_CUDA=off)"}
    if not kernels.cuda_available():
        return {"skipped": "no CUDA device is visible to this process"}
    n_way, shot, d, steps, lr = 5, 5, 64, 100, 0.5
    x, y = support_set(2, n_way * shot, n_way, d)
    xc, yc = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    sync = torch.cuda.synchronize
    ours = median_seconds(lambda: kernels.adapt_head(xc, yc, n_way, steps, lr, init="zeros", backend="native"),
                          repeats_native, sync=sync)  # fmt: skip
    theirs = median_seconds(lambda: torch_adapt_head(xc, yc, n_way, steps, lr), repeats_torch, sync=sync)
    w, _ = kernels.adapt_head(xc, yc, n_way, steps, lr, init="zeros", backend="native")
    w_torch, _ = torch_adapt_head(xc, yc, n_way, steps, lr)
    return {
        "device": torch.cuda.get_device_name(xc.device),
        "shape": f"{n_way}-way {shot}-shot, D={d}, {steps} steps",
        "native_ms": ours * 1e3,
        "torch_ms": theirs * 1e3,
        "speedup": theirs / ours,
        "target": 50.0,
        "max_abs_diff_vs_torch": float((w - w_torch).abs().max()),
    }


def bench_episode_kernels(repeats: int) -> dict:
    n_way, shot, queries, d, scale = 20, 5, 15, 64, 10.0
    emb, labels = support_set(3, n_way * shot, n_way, d)
    q = np.random.default_rng(4).standard_normal((n_way * queries, d)).astype(np.float32)
    et, lt, qt = torch.from_numpy(emb), torch.from_numpy(labels), torch.from_numpy(q)

    def torch_prototypes():
        sums = torch.zeros(n_way, d).index_add_(0, lt, et)
        return F.normalize(sums / torch.bincount(lt, minlength=n_way).unsqueeze(1), dim=1)

    protos, protos_t = kernels.prototypes(emb, labels, n_way), torch_prototypes()
    runs = {
        "prototypes": {
            "native": lambda: kernels.prototypes(emb, labels, n_way, backend="native"),
            "reference": lambda: kernels.prototypes(emb, labels, n_way, backend="reference"),
            "torch": torch_prototypes,
        },
        "logits": {
            "native": lambda: kernels.logits(q, protos, "cosine", scale, backend="native"),
            "reference": lambda: kernels.logits(q, protos, "cosine", scale, backend="reference"),
            "torch": lambda: scale * F.normalize(qt, dim=1) @ protos_t.T,
        },
    }
    out = {"shape": f"{n_way}-way {shot}-shot, {queries} queries a class, D={d}, cosine logits"}
    for kernel, impls in runs.items():
        out[kernel] = {name: median_seconds(fn, repeats) * 1e6 for name, fn in impls.items()}  # microseconds
    return out


# ---- report ---------------------------------------------------------------------------------------------------


def verdict(ratio: float, target: float) -> str:
    return f"target >= {target:g}x: {'met' if ratio >= target else 'NOT met'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run, noisier figures)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--clock-ghz", type=float, help="core clock for the theoretical peak (default: /proc/cpuinfo)")
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(cores)
    info = cpu_info()
    per_cycle, per_cycle_why = flops_per_cycle(info)
    ghz = args.clock_ghz or (info["mhz"] or 0.0) / 1e3
    print(f"CPU: {info['model']} (family {info['family']}, model {info['model_number']}), {cores} usable cores")
    print(f"     ISA flags: {' '.join(info['flags'])}")
    print(f"torch {torch.__version__}: torch.set_num_threads({cores}) (one per usable core), "
          f"torch.get_num_threads() = {torch.get_num_threads()}")  # fmt: skip
    print(f"metaedge._C: {'built' if kernels.native_available() else 'NOT built'}, "
          f"CUDA kernels {'built' if kernels.native_available() and kernels._C.cuda_built() else 'not built'}, "
          f"CUDA device {'present' if kernels.cuda_available() else 'absent'}")  # fmt: skip
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    busy = busy_cores()
    busy_text = "unknown" if busy is None else f"{busy:.2f} cores"
    print(f"before the run: other processes busy {busy_text} (over 0.5 s), load average {load:.2f} on {cores} cores"
          + ("  -> they compete: expect noisy figures" if busy is not None and busy > 0.25 else ""))  # fmt: skip
    if not kernels.native_available():
        sys.exit(f"metaedge at {Path(kernels.__file__).parent} has no compiled kernels (metaedge._C): install it with "
                 "`pip install .` (or `pip install -e .` in a checkout, CONTRIBUTING.md)")

    practical, practical_how = practical_peak_gflops(2048, 2 if args.quick else 4)
    peak = {
        "flop_per_cycle_per_core": per_cycle,
        "assumption": per_cycle_why,
        "clock_ghz": ghz,
        "clock_source": "--clock-ghz" if args.clock_ghz else "cpu MHz of /proc/cpuinfo",
        "theoretical_gflops": per_cycle * ghz * cores,
        "practical_gflops": practical,
        "practical_how": practical_how,
        "implied_clock_ghz": practical / (per_cycle * cores),
    }
    nominal = (
        ""
        if args.clock_ghz
        else " (the nominal clock in a VM: a boosting core runs faster, so measured rates can pass this figure)"
    )
    print(f"peak: theoretical {peak['theoretical_gflops']:.0f} GFLOP/s = {per_cycle} FLOP/cycle/core x {ghz:.2f} GHz "
          f"x {cores} cores; {per_cycle_why}; clock from {peak['clock_source']}{nominal}")  # fmt: skip
    print(f"      practical {practical:.0f} GFLOP/s: {practical_how}; implies >= {peak['implied_clock_ghz']:.2f} GHz")

    quick = args.quick
    machine = {"cpu": info, "cores": cores, "torch": torch.__version__, "load": load, "busy_cores": busy}
    results: dict = {"machine": machine, "peak": peak}

    print("\n[1] adapt_head on CPU, small (the few-shot case)")
    r = results["adapt_head_cpu_small"] = bench_small_cpu(50 if quick else 200, 10 if quick else 50)
    print(f"    {r['shape']}: native {r['native_ms']:.3f} ms, torch eager {r['torch_ms']:.2f} ms "
          f"(median of {r['repeats']['native']} / {r['repeats']['torch']})")  # fmt: skip
    print(f"    speed-up {r['speedup']:.0f}x  ({verdict(r['speedup'], r['target'])}); "
          f"max |W - W_torch| = {r['max_abs_diff_vs_torch']:.1e}")  # fmt: skip

    print("\n[2] adapt_head on CPU, large (compute-bound)")
    r = results["adapt_head_cpu_large"] = bench_large_cpu(3 if quick else 7, peak)
    print(f"    {r['shape']}: native {r['native_ms']:.1f} ms, torch eager {r['torch_ms']:.1f} ms "
          f"(median of {r['repeats']})")  # fmt: skip
    print(f"    speed-up {r['speedup']:.2f}x  ({verdict(r['speedup'], r['target'])})")
    print(f"    {r['gflop']:.1f} GFLOP (4*N*C*D a step): native {r['native_gflops']:.0f} GFLOP/s = "
          f"{100 * r['fraction_of_theoretical_peak']:.0f}% of theoretical, "
          f"{100 * r['fraction_of_practical_peak']:.0f}% of practical peak; "
          f"torch {r['torch_gflops']:.0f} GFLOP/s")  # fmt: skip

    print("\n[3] adapt_head on CUDA, small")
    r = results["adapt_head_cuda_small"] = bench_small_cuda(50 if quick else 200, 10 if quick else 50)
    if "skipped" in r:
        print(f"    skipped: {r['skipped']}")
    else:
        print(f"    {r['device']}, {r['shape']}: native {r['native_ms']:.3f} ms, torch eager {r['torch_ms']:.2f} ms")
        print(f"    speed-up {r['speedup']:.0f}x  ({verdict(r['speedup'], r['target'])}); "
              f"max |W - W_torch| = {r['max_abs_diff_vs_torch']:.1e}")  # fmt: skip

    print("\n[4] prototypes and logits on CPU (microseconds, median)")
    r = results["episode_kernels"] = bench_episode_kernels(100 if quick else 500)
    print(f"    {r['shape']}")
    for kernel in ("prototypes", "logits"):
        t = r[kernel]
        print(f"    {kernel:<10} native {t['native']:7.1f}  numpy reference {t['reference']:7.1f}  "
              f"torch {t['torch']:7.1f}   native vs reference {t['reference'] / t['native']:.1f}x, "
              f"vs torch {t['torch'] / t['native']:.1f}x")  # fmt: skip

    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
