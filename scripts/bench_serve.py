"""Load on loopback: `metaedge serve --workers N` under C concurrent clients making R mixed requests.

Prints classify latency through HTTP (p50/p99, one client, idle server) beside the in-process figure of the same
image in the same run, then the load phase: requests per second, 5xx count, and whether every acknowledged
enrollment is in the gallery afterwards. Bounded: R requests, and a deadline.

    python scripts/bench_serve.py --workers 2 --clients 8 --requests 2000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parents[1] / "metaedge" / "reference" / "samples" / "Korean"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, *, workers: int = 1, port: int | None = None, extra: tuple[str, ...] = (),
                 timeout: float = 120.0, env: dict | None = None) -> tuple[subprocess.Popen, int]:  # fmt: skip
    """`metaedge serve` in its own process group (so a test can kill every worker at once); waits for /healthz."""
    port = port or free_port()
    command = [sys.executable, "-m", "metaedge", "serve", "--store", str(store), "--port", str(port),
               "--workers", str(workers), "--log-level", "warning", *extra]  # fmt: skip
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"metaedge serve exited with {proc.returncode}: {proc.stdout.read().decode()[-2000:]}")
        try:
            status, _ = request(port, "GET", "/healthz", timeout=2)
            if status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    stop_server(proc, signal.SIGKILL)
    raise RuntimeError(f"metaedge serve did not answer /healthz within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def multipart(fields: dict[str, str], images: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]  # fmt: skip
    for name, data in images:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{name}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")  # fmt: skip
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(port: int, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
            conn: http.client.HTTPConnection | None = None, timeout: float = 60) -> tuple[int, bytes]:  # fmt: skip
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        if own:
            conn.close()


def character(n: int) -> list[bytes]:
    return [p.read_bytes() for p in sorted((SAMPLES / f"character{n:02d}").glob("*.png"))]


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "n": len(ms)} if ms else {}


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by every process in a process group (Linux /proc)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...; utime/stime at 11/12
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def latency(port: int, store: Path, image: bytes, n: int, pgid: int) -> dict:
    """Classify one image n times each way: in this process through metaedge.Runtime (the floor HTTP adds to), and
    one request at a time on a kept-alive connection, as multipart and as a raw body. The ways run in interleaved
    blocks of 20, so a machine whose load drifts during the run shifts all of them alike. Beside wall time, CPU time
    per call (server processes + this client for HTTP), which a busy machine inflates less.

    The floor is measured twice: on this (the caller's) thread, and on a thread of its own that sleeps between
    calls, as the server's runtime thread does. On an idle machine the two agree; on a loaded one the kernel lets
    a thread that wakes from sleep cut in ahead of running work, so the caller's busy thread runs classify several
    times slower than the server's sleeping one (measured at load average 10: 10.7 against 2.3 ms), and HTTP would
    look faster than no HTTP at all.
    """
    from concurrent.futures import ThreadPoolExecutor

    import metaedge
    from metaedge import ort

    # The same ONNX Runtime settings as the server's runtime (metaedge/serve/app.py), so the difference between
    # the figures is HTTP and nothing else.
    ort.ALLOW_SPINNING = False
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body, ctype = multipart({}, [("q.png", image)])
    bodies = {"multipart": (body, ctype), "raw": (image, "image/png")}
    floors = ("in_process", "in_process_thread")
    ms: dict[str, list[float]] = {name: [] for name in (*floors, "multipart", "raw")}
    paired = {(http_, floor): [] for http_ in bodies for floor in floors}  # per block: HTTP's median - floor's
    cpu, server_cpu = dict.fromkeys(ms, 0.0), dict.fromkeys(bodies, 0.0)
    thread = ThreadPoolExecutor(max_workers=1)
    with metaedge.Runtime(None, store, readonly=True) as rt:
        own = thread.submit(metaedge.Runtime, None, store, readonly=True).result()  # its gallery is that thread's
        calls = {"in_process": lambda: rt.classify([image]),
                 "in_process_thread": lambda: thread.submit(own.classify, [image]).result()}  # fmt: skip
        for name, (b, t) in bodies.items():
            calls[name] = lambda b=b, t=t: request(port, "POST", "/v1/classify", b, t, conn)
        for call in calls.values():  # warm: sessions, caches, the connection
            for _ in range(10):
                call()
        for _ in range(max(1, n // 20)):
            for name, call in calls.items():
                cpu0, server0 = time.process_time(), group_cpu_s(pgid) if name not in floors else 0.0
                for _ in range(20):
                    t0 = time.perf_counter()
                    call()
                    ms[name].append(1e3 * (time.perf_counter() - t0))
                if name in floors:
                    cpu[name] += time.process_time() - cpu0
                else:
                    server_cpu[name] += group_cpu_s(pgid) - server0
                    cpu[name] += time.process_time() - cpu0 + group_cpu_s(pgid) - server0
            for http_, floor in paired:
                paired[http_, floor].append(float(np.median(ms[http_][-20:])) - float(np.median(ms[floor][-20:])))
        thread.submit(own.close).result()
    thread.shutdown()
    conn.close()
    out = {name: {**percentiles(v), "cpu_ms_per_request": 1e3 * cpu[name] / len(v)} for name, v in ms.items()}
    for name, seconds in server_cpu.items():  # the device's share: what the client spends is not the server's
        out[name]["server_cpu_ms_per_request"] = 1e3 * seconds / len(ms[name])
    for (http_, floor), diffs in paired.items():
        # Each block's medians were taken within a few hundred ms of each other, so a load that drifts over the
        # run (a shared machine) moves both sides of each difference alike.
        out[http_][f"overhead_paired_p50_ms_vs_{floor}"] = float(np.median(diffs))
    return out


def run_load(port: int, *, clients: int, requests: int, deadline_s: float, seed: int = 0) -> dict:
    """`requests` mixed requests (60% classify, 20% enroll of a new class, 20% list) from `clients` threads."""
    pool = {n: character(n) for n in range(1, 11)}
    rng = random.Random(seed)
    plan = rng.choices(["classify", "enroll", "list"], weights=[60, 20, 20], k=requests)
    lock, cursor = threading.Lock(), [0]
    statuses: dict[str, dict[int, int]] = {}
    times: dict[str, list[float]] = {k: [] for k in ("classify", "enroll", "list")}
    acknowledged: dict[str, int] = {}
    errors: list[str] = []
    stop_at = time.monotonic() + deadline_s

    def client(index: int) -> None:
        r = random.Random(seed * 1000 + index)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop_at:
            with lock:
                if cursor[0] >= len(plan):
                    break
                i, cursor[0] = cursor[0], cursor[0] + 1
            kind = plan[i]
            images = pool[r.randint(1, 10)]
            if kind == "classify":
                args = ("POST", "/v1/classify?top_k=3", *multipart({}, [("q.png", r.choice(images[10:]))]))
            elif kind == "enroll":
                label = f"load-{seed}-{i}"
                shots = r.randint(1, 5)
                shot_files = [(f"{k}.png", images[k]) for k in range(shots)]
                args = ("POST", "/v1/classes", *multipart({"label": label}, shot_files))
            else:
                args = ("GET", "/v1/classes", None, None)
            t0 = time.perf_counter()
            try:
                status, body = request(port, *args, conn=conn)
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"{kind}: {type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            elapsed = 1e3 * (time.perf_counter() - t0)
            with lock:
                times[kind].append(elapsed)
                statuses.setdefault(kind, {}).setdefault(status, 0)
                statuses[kind][status] += 1
                if kind == "enroll" and status == 201:
                    acknowledged[label] = shots
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    status, body = request(port, "GET", "/v1/classes")
    present = {c["label"]: c["count"] for c in json.loads(body)} if status == 200 else {}
    done = sum(len(v) for v in times.values())
    return {
        "clients": clients, "requests_planned": requests, "requests_done": done, "seconds": wall,
        "requests_per_s": done / wall, "statuses": statuses, "transport_errors": errors[:5],
        "count_5xx": sum(n for by in statuses.values() for s, n in by.items() if s >= 500),
        "latency_ms": {k: percentiles(v) for k, v in times.items()},
        "acknowledged_enrollments": len(acknowledged),
        "acknowledged_missing_or_wrong": sorted(k for k, v in acknowledged.items() if present.get(k) != v),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--latency-n", type=int, default=300, help="Sequential classify calls per latency figure.")
    parser.add_argument("--deadline", type=float, default=300.0, help="Seconds the load phase may take at most.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="metaedge-bench-serve-") as tmp:
        store = Path(tmp) / "gallery.db"
        proc, port = start_server(store, workers=args.workers)
        figures: dict = {}
        try:
            for n in range(1, 11):  # ten classes to classify against
                status, body = request(port, "POST", "/v1/classes", *multipart({"label": f"c{n}"}, [
                    (f"{k}.png", d) for k, d in enumerate(character(n)[:5])]))  # fmt: skip
                assert status == 201, body
            query = character(3)[12]
            figures["load_average_before"] = os.getloadavg()[0]
            measured = latency(port, store, query, args.latency_n, proc.pid)
            figures.update(in_process_ms=measured.pop("in_process"), in_process_thread_ms=measured.pop(
                "in_process_thread"), http_ms=measured)  # fmt: skip
            figures["http_overhead_p50_ms"] = {k: v["p50"] - figures["in_process_ms"]["p50"]
                                               for k, v in figures["http_ms"].items()}  # fmt: skip
            figures["load"] = run_load(port, clients=args.clients, requests=args.requests, deadline_s=args.deadline)
        finally:
            figures_exit = stop_server(proc)
        figures["exit_code_after_sigterm"] = figures_exit
    figures["workers"], figures["cpus"] = args.workers, os.cpu_count()
    if args.json:
        print(json.dumps(figures, indent=1))
        return
    load = figures["load"]
    inproc = figures["in_process_ms"]
    own = figures["in_process_thread_ms"]
    print(f"classify one image, in process:     p50 {inproc['p50']:.2f} ms  p99 {inproc['p99']:.2f} ms  "
          f"CPU {inproc['cpu_ms_per_request']:.2f} ms  (on its own thread: p50 {own['p50']:.2f} ms)")
    for k, v in figures["http_ms"].items():
        print(f"classify one image, HTTP {k:9s}: p50 {v['p50']:.2f} ms  p99 {v['p99']:.2f} ms  "
              f"CPU {v['cpu_ms_per_request']:.2f} ms (server {v['server_cpu_ms_per_request']:.2f}, client the rest)")
        print(f"  HTTP adds {figures['http_overhead_p50_ms'][k]:.2f} ms at p50; as the median of paired block "
              f"medians {v['overhead_paired_p50_ms_vs_in_process']:.2f} ms (in process on its own thread: "
              f"{v['overhead_paired_p50_ms_vs_in_process_thread']:.2f} ms); "
              f"{v['cpu_ms_per_request'] - inproc['cpu_ms_per_request']:.2f} ms of CPU")
    print(f"machine: {os.cpu_count()} CPUs, load average {figures['load_average_before']:.1f} before the latency "
          f"run, {os.getloadavg()[0]:.1f} at the end")
    print(f"load: {load['requests_done']}/{load['requests_planned']} requests from {load['clients']} clients against "
          f"--workers {args.workers} in {load['seconds']:.1f} s: {load['requests_per_s']:.0f} req/s, "
          f"{load['count_5xx']} 5xx, {len(load['transport_errors'])} transport errors")
    for k, v in load["latency_ms"].items():
        if v:
            print(f"  {k:8s} p50 {v['p50']:.1f} ms  p99 {v['p99']:.1f} ms  ({v['n']} requests)")
    print(f"enrollments acknowledged: {load['acknowledged_enrollments']}, missing or short afterwards: "
          f"{len(load['acknowledged_missing_or_wrong'])}; server exit code after SIGTERM: {figures_exit}")


if __name__ == "__main__":
    main()
