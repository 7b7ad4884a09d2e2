"""The backbone backends one profile puts side by side: PyTorch eager, ONNX Runtime per provider, TensorRT.

Every backend maps the same host input to the same host output, float32 images (B, C, H, W) -> float32
embeddings (B, D), so copies to and from a GPU are inside the timed call, as they are on the device.
A backend that cannot run here is still listed, with the reason, never dropped.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metaedge.bundle import Bundle
from metaedge.errors import MetaedgeError
from metaedge.ort import create_session, run_batched
from metaedge.profiling.config import ProfileError

Runner = Callable[[np.ndarray], np.ndarray]
ORT_NAMES = {"CPUExecutionProvider": "ort-cpu", "CUDAExecutionProvider": "ort-cuda",
             "TensorrtExecutionProvider": "ort-tensorrt"}  # fmt: skip
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass
class Backend:
    """One backbone backend. `open()` loads or builds it (the cold part) and returns its runner;
    `status` is "ok" or "skipped", and a skipped backend says why in `reason`."""

    name: str
    kind: str
    status: str = "ok"
    reason: str | None = None
    gpu: bool = False
    detail: dict = field(default_factory=dict)
    open: Callable[[], Runner] | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "status": self.status, "reason": self.reason,
                "gpu": self.gpu, **self.detail}  # fmt: skip


def _skipped(name: str, kind: str, reason: str, **detail) -> Backend:
    return Backend(name, kind, status="skipped", reason=reason, detail=detail)


def _chunked(run: Runner, max_batch: int) -> Runner:
    # The same split the runtime makes (run_batched): a batch above the limit runs as several.
    def runner(x: np.ndarray) -> np.ndarray:
        if len(x) <= max_batch:
            return run(x)
        return np.concatenate([run(x[i : i + max_batch]) for i in range(0, len(x), max_batch)])

    return runner


def resolve(bundle: Bundle, target: dict, kinds: tuple[str, ...], checkpoint: Path | None) -> tuple[list, list]:
    """(backends, warnings) for `bundle` run with `target` (a target profile as a dict).

    kinds: the backend kinds asked for; the others are listed as skipped ("not requested").
    """
    backends: list[Backend] = []
    warnings: list[str] = []
    backends.append(_torch(bundle, target, checkpoint, warnings) if "torch" in kinds
                    else _skipped("torch", "torch", "not requested (--backend)"))  # fmt: skip
    backends += _onnxruntime(bundle, target, "onnxruntime" in kinds)
    backends.append(_tensorrt(bundle) if "tensorrt" in kinds
                    else _skipped("tensorrt", "tensorrt", "not requested (--backend)"))  # fmt: skip
    return backends, warnings


def _torch(bundle: Bundle, target: dict, checkpoint: Path | None, warnings: list[str]) -> Backend:
    if checkpoint is None:
        return _skipped("torch", "torch", "no --checkpoint given (PyTorch eager runs the training checkpoint)")
    if importlib.util.find_spec("torch") is None:
        return _skipped("torch", "torch", "torch is not importable")
    import torch

    from metaedge import checkpoint as ckpt
    from metaedge.exporter import model_id

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = f"torch-{device}"
    try:
        loaded = ckpt.load(checkpoint, map_location=device)
    except MetaedgeError as e:  # the user named this checkpoint: a bad one is an error, not a skip
        raise ProfileError(f"--checkpoint: {e}") from None
    spec, mine = bundle.preprocess, loaded.preprocess
    if (spec.channels, spec.size) != (mine.channels, mine.size):
        return _skipped(name, "torch", f"the checkpoint takes {mine.channels}x{mine.size}x{mine.size} images, "
                                       f"the bundle {spec.channels}x{spec.size}x{spec.size}")  # fmt: skip
    # The bundle's test-time views are part of its graph; PyTorch runs the same views, or it would time less work.
    views = int(bundle.manifest["backbone"].get("views", 1))
    loaded.set_views(views)
    if bundle.has_enroll_graph:  # timed: the query graph; named: as the bundle is, so the ids compare
        loaded.set_enroll_views(int(bundle.manifest["backbone"]["enroll"]["views"]))
    ident = model_id(loaded, int8=bundle.manifest["backbone"].get("precision") == "int8")
    same_net = loaded.meta["backbone"]["name"] == bundle.manifest["backbone"]["name"] and \
        loaded.meta["backbone"]["kwargs"] == bundle.manifest["backbone"].get("kwargs")  # fmt: skip
    if not same_net:
        warnings.append(f"the checkpoint's backbone ({loaded.meta['backbone']}) is not the bundle's: torch figures "
                        "measure another network than the onnxruntime ones")  # fmt: skip
    # An int8 bundle's id ends in a digest of its calibration images, which the checkpoint cannot know.
    elif bundle.model_id != ident and not bundle.model_id.startswith(f"{ident}-"):
        warnings.append(f"the checkpoint is {ident}, the bundle {bundle.model_id}: same architecture, other weights "
                        "(latency depends on the architecture only)")  # fmt: skip
    path = loaded.path
    del loaded
    max_batch = int(target.get("max_batch", 64))

    def open_torch() -> Runner:
        reloaded = ckpt.load(path, map_location=device)
        reloaded.set_views(views)
        method = reloaded.method.to(device)  # eval mode: batch norm uses running statistics

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return method.embed(torch.from_numpy(x).to(device)).float().cpu().numpy()

        return _chunked(run, max_batch)

    return Backend(name, "torch", gpu=device == "cuda", open=open_torch,
                   detail={"device": device, "checkpoint": str(path), "model_id": ident})  # fmt: skip


def _onnxruntime(bundle: Bundle, target: dict, requested: bool) -> list[Backend]:
    import onnxruntime as ort

    providers = list(target.get("onnxruntime_providers") or ["CPUExecutionProvider"])
    have = ort.get_available_providers()
    threads = int(target.get("threads", 0))
    max_batch = int(target.get("max_batch", 64))
    out = []
    for provider in providers:
        name = ORT_NAMES.get(provider, "ort-" + provider.removesuffix("ExecutionProvider").lower())
        detail = {"provider": provider, "threads": threads,
                  "precision": bundle.manifest["backbone"].get("precision", "fp32")}  # fmt: skip
        if not requested:
            out.append(_skipped(name, "onnxruntime", "not requested (--backend)", **detail))
            continue
        if provider not in have:
            out.append(_skipped(name, "onnxruntime", f"{provider}: not in this onnxruntime build "
                                                     f"(it has {', '.join(have)})", **detail))  # fmt: skip
            continue
        # A build can list a GPU provider whose CUDA libraries or device are missing; ONNX Runtime then
        # quietly runs on the CPU instead. One probe session tells which provider really runs.
        try:
            probe = create_session(bundle.onnx_path, [provider], threads)
        except MetaedgeError as e:
            out.append(_skipped(name, "onnxruntime", f"{provider}: {e}", **detail))
            continue
        actual = probe.get_providers()[0]
        del probe
        if actual != provider:
            out.append(
                _skipped(
                    name,
                    "onnxruntime",
                    f"{provider}: in this build, but ONNX Runtime fell back to "
                    f"{actual} (its CUDA libraries or a GPU are missing)",
                    **detail,
                )
            )
            continue

        def open_ort(provider: str = provider) -> Runner:
            session = create_session(bundle.onnx_path, [provider], threads)
            return lambda x: run_batched(session, x, max_batch)

        out.append(Backend(name, "onnxruntime", gpu=provider in GPU_PROVIDERS, open=open_ort, detail=detail))
    return out


def _tensorrt(bundle: Bundle) -> Backend:
    from metaedge import tensorrt_engine as trt_engine

    engine = bundle.manifest.get("engine")
    reasons = []
    try:
        trt_engine.import_tensorrt()
    except trt_engine.TensorRTUnavailable:
        reasons.append("tensorrt: not importable")
    if not engine:
        reasons.append("the bundle has no TensorRT engine (export it with --format tensorrt)")
    if reasons:
        return _skipped("tensorrt", "tensorrt", "; ".join(reasons))
    import torch

    if not torch.cuda.is_available():
        return _skipped("tensorrt", "tensorrt", "tensorrt is installed but no CUDA device is visible")
    detail = {"precision": engine.get("precision"), "engine_gpu": engine.get("gpu"),
              "engine_tensorrt": engine.get("tensorrt")}  # fmt: skip
    here = torch.cuda.get_device_name()
    if engine.get("gpu") and engine["gpu"] != here:
        why = f"the engine was built on {engine['gpu']}, this GPU is {here} (engines run only where they were built)"
        return _skipped("tensorrt", "tensorrt", why, **detail)
    backbone = bundle.manifest["backbone"]
    names = (backbone.get("input", {}).get("name", "images"), backbone.get("output", {}).get("name", "embeddings"))
    try:
        engine_file = bundle.file(engine["file"])
    except MetaedgeError as e:
        return _skipped("tensorrt", "tensorrt", str(e), **detail)
    max_batch = int(engine.get("max_batch", 1))

    def open_trt() -> Runner:
        return _chunked(trt_engine.EngineRunner(engine_file.read_bytes(), *names), max_batch)

    return Backend("tensorrt", "tensorrt", gpu=True, open=open_trt, detail=detail)
