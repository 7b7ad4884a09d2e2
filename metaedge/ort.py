"""ONNX Runtime sessions built from a target profile: the providers it names that this machine has, in order."""

from __future__ import annotations

import os

import numpy as np

from metaedge.errors import MetaedgeError

# ONNX Runtime's intra-op threads spin for a while after each run: the lowest latency for a process alone, but CPU
# burnt that the other processes of a server need (metaedge serve turns it off: metaedge/serve/app.py).
ALLOW_SPINNING = True


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
