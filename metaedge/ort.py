"""ONNX Runtime sessions built from a target profile: the providers it names that this machine has, in order."""

from __future__ import annotations

import os

import numpy as np

from metaedge.errors import MetaedgeError

# ONNX Runtime's intra-op threads spin for a while after each run: the lowest latency for a process alone, but CPU
# burnt that the other processes of a server need (metaedge serve turns it off: metaedge/serve/app.py).
ALLOW_SPINNING = True

# int8 arithmetic exactly as export verified it. On x86 CPUs without VNNI (AVX2 and SSE4.1 parts: AMD Zen 1-3, most
# Atoms and Celerons) ONNX Runtime's fast u8 x s8 kernels add pairs of products in 16 bits (VPMADDUBSW) and saturate
# when a weight lies outside [-64, 63]; this option makes it use u8 x u8 kernels there instead, and does nothing on
# VNNI or ARM CPUs, which never saturate. Measured on an AMD EPYC (Zen 3, AVX2) with the reference bundles: an int8
# export of the tiny test network failed its parity check without it (min cosine 0.974, 79% agreement), and the
# shipped single network and ensemble lost 0.05-0.12 points of 20-way 1-shot accuracy, giving exactly the Intel VNNI
# figures back with it; the cost there is 1.25x the batch-1 network time and 1.4x a 5-image enrollment's.
EXACT_INT8 = True


def available_providers(wanted: tuple[str, ...] | list[str]) -> list[str]:
    """The profile's providers this onnxruntime build offers, in the profile's order; CPU always last resort."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in have]
    return chosen if "CPUExecutionProvider" in chosen else [*chosen, "CPUExecutionProvider"]


def create_session(path: str | os.PathLike, providers: tuple[str, ...] | list[str] = ("CPUExecutionProvider",),
                   threads: int = 0):  # fmt: skip
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: ONNX Runtime picks one thread per physical core
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if EXACT_INT8:
        options.add_session_config_entry("session.x64quantprecision", "1")
    if not ALLOW_SPINNING:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=available_providers(providers))
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise MetaedgeError(f"{path}: ONNX Runtime cannot load it ({e})") from None


def run_batched(session, images: np.ndarray, max_batch: int = 64) -> np.ndarray:
    """images float32 (N, C, H, W) -> outputs float32 (N, D), in batches of at most `max_batch`."""
    name = session.get_inputs()[0].name
    if len(images) <= max_batch:  # one run: its output as it is, without np.concatenate's copy
        return session.run(None, {name: images})[0].astype(np.float32, copy=False)
    out = [session.run(None, {name: images[i : i + max_batch]})[0] for i in range(0, len(images), max_batch)]
    return np.concatenate(out).astype(np.float32, copy=False)
