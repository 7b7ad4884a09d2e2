"""The timing machinery every figure goes through: a cold call, warm-up, timed calls, and their statistics."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

HOST_CLOCK = "host wall clock, perf_counter_ns"
CUDA_CLOCK = "CUDA synchronised (torch.cuda.synchronize before and after each call), perf_counter_ns"
MAX_SAMPLES = 100_000  # --duration on a sub-microsecond stage must not fill the memory with samples
OVERHEAD_ITERATIONS = 2_000

# start() prepares whatever the stage opens (a session, a gallery file, a runtime) and returns call(i);
# call(i) does one unit of work on the i-th input of a rotation, so repeated calls do not hit one cached input.
Call = Callable[[int], object]
Start = Callable[[], Call]


@dataclass(frozen=True)
class Timing:
    """One figure's raw measurement.

    cold_ns: start() plus the first call(0), in nanoseconds.
    samples_ns: int64 array of shape (iterations,), each timed call after the warm-up, in nanoseconds.
    method: how the clock was read (HOST_CLOCK or CUDA_CLOCK).
    """

    cold_ns: int
    samples_ns: np.ndarray
    method: str


def measure(start: Start, *, warmup: int, iterations: int | None = None, duration_s: float | None = None,
            sync: Callable[[], None] | None = None) -> Timing:  # fmt: skip
    """Time start() + call(0) as the cold call, run `warmup` untimed calls, then time `iterations` calls
    (or calls until `duration_s` seconds of them have run, at least one). `sync`, when given, runs before
    and after every timed call (torch.cuda.synchronize for GPU backends: a launch returns before the work ends).
    """
    if (iterations is None) == (duration_s is None):
        raise ValueError("give exactly one of iterations and duration_s")
    clock = time.perf_counter_ns
    no_sync = sync is None
    if no_sync:
        sync = _nothing
    sync()
    t0 = clock()
    call = start()
    call(0)
    sync()
    cold = clock() - t0
    for i in range(1, 1 + warmup):
        call(i)
    first = 1 + warmup
    budget = None if duration_s is None else int(duration_s * 1e9)
    limit = iterations if iterations is not None else MAX_SAMPLES
    samples = np.empty(limit, dtype=np.int64)
    spent = 0
    n = 0
    while n < limit:
        sync()
        t0 = clock()
        call(first + n)
        sync()
        samples[n] = dt = clock() - t0
        n += 1
        spent += dt
        if budget is not None and spent >= budget:
            break
    return Timing(cold, samples[:n].copy(), HOST_CLOCK if no_sync else CUDA_CLOCK)


def _nothing() -> None:
    pass


def statistics(timing: Timing, items: int) -> dict:
    """Summary of a Timing, in milliseconds; `items` is the work of one call (images, support shots, ...).

    min, p50, p90, p99 and max come from one numpy percentile call on one sample (q = 0, 50, 90, 99, 100),
    so min <= p50 <= p90 <= p99 <= max holds by construction. std is the sample standard deviation
    (0 for one sample). throughput_per_s = items / mean.
    """
    s = timing.samples_ns.astype(np.float64) / 1e6
    lo, p50, p90, p99, hi = (float(v) for v in np.percentile(s, [0, 50, 90, 99, 100]))
    mean = float(s.mean())
    return {
        "cold_ms": timing.cold_ns / 1e6, "min_ms": lo, "mean_ms": mean,
        "std_ms": float(s.std(ddof=1)) if len(s) > 1 else 0.0,
        "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": hi,
        "throughput_per_s": items / (mean / 1e3) if mean > 0 else None,
        "iterations": int(len(s)), "items_per_call": int(items), "timing": timing.method,
    }  # fmt: skip


def overhead(sync: Callable[[], None] | None = None) -> dict:
    """The machinery's own cost: a no-op stage timed exactly as the real ones are (same loop, same clock)."""
    timing = measure(lambda: _noop, warmup=100, iterations=OVERHEAD_ITERATIONS, sync=sync)
    s = timing.samples_ns.astype(np.float64) / 1e6
    p50, p99 = (float(v) for v in np.percentile(s, [50, 99]))
    return {"p50_ms": p50, "mean_ms": float(s.mean()), "p99_ms": p99, "iterations": int(len(s)),
            "timing": timing.method}  # fmt: skip


def _noop(i: int) -> None:
    pass
