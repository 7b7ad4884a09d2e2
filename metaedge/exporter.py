"""`metaedge export`: checkpoint -> verified, self-describing deployment bundle (ONNX; TensorRT where present)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from metaedge import bundle as bundle_io
from metaedge import checkpoint as ckpt
from metaedge import onnx_clean, quantize
from metaedge import tensorrt_engine as trt_engine
from metaedge.data import LoadedDataset, open_dataset
from metaedge.errors import MetaedgeError
from metaedge.open_set import CalibrationError, calibrate_curve, calibrate_sessions
from metaedge.ort import create_session, run_batched
from metaedge.parity import AGREEMENT_FAILURE, ParityReport, check_parity
from metaedge.targets import TargetProfile, get_target

INPUT, OUTPUT = "images", "embeddings"
DEFAULT_OPSET = 18


class ExportError(MetaedgeError):
    """The export cannot be made, or its parity check failed."""


@dataclass
class AdaptationDefaults:
    """Head adaptation for models that did not learn one (ProtoNet): a linear head on L2-normalised features,
    initialised from the prototypes.

    Chosen on the reference model's validation alphabet (Japanese, never a test alphabet), 20-way 5-shot,
    100 episodes: prototypes alone 90.8%; normalised head, 10 steps of 0.1: 90.2%; 50 steps: 89.6%;
    unnormalised features, 10 steps of 1.0: 56.7%. Few, small steps keep the head near the prototypes.
    """

    steps: int = 10
    lr: float = 0.1
    weight_decay: float = 5e-4
    head_init: str = "prototypes"

    def to_dict(self, learned: bool = False) -> dict:
        return {"head_init": self.head_init, "steps": self.steps, "lr": self.lr,
                "weight_decay": self.weight_decay, "learned": learned}  # fmt: skip


@dataclass
class ExportResult:
    bundle: bundle_io.Bundle | None
    parity: list[ParityReport]
    seconds: float
    dry_run_command: str | None = None
    timings: dict = field(default_factory=dict)


def model_id(checkpoint: ckpt.Checkpoint, int8: bool = False, calibration: np.ndarray | None = None) -> str:
    """What galleries are keyed by; calibration: the images int8 measured its ranges on, as the quantizer saw them."""
    digest = hashlib.sha256(Path(checkpoint.path).read_bytes()).hexdigest()[:12]
    base = f"{checkpoint.meta['algorithm']['name']}-{checkpoint.meta['backbone']['name']}-{digest}"
    # Views and quantization change every embedding, so a gallery enrolled through one graph must not
    # match a bundle with another.
    if checkpoint.views != 1:
        base = f"{base}-v{checkpoint.views}"
    if checkpoint.enrolls_apart:
        base = f"{base}-e{checkpoint.enroll_views}"
    return base + quantize.id_suffix(calibration) if int8 else base


class _Embedder(torch.nn.Module):
    """What the device runs: the method's eval-mode embedding (the backbone, through any test-time views)."""

    def __init__(self, method, support: bool = False) -> None:
        super().__init__()
        self.method, self.support = method, support

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.embed_support(x) if self.support else self.method.embed(x)


def export_onnx(checkpoint: ckpt.Checkpoint, path: Path, opset: int = DEFAULT_OPSET, *, support: bool = False) -> None:
    """The backbone alone as a static graph: images (batch, C, S, S) -> embeddings (batch, D), batch dynamic.

    support: the enrollment graph, through the checkpoint's enroll views, instead of the query graph.

    Uses the exporter torch recommends (torch.export-based `dynamo=True`), whose optimiser folds constants
    and batch norm into the convolutions. Its per-node metadata (stack traces naming this machine's folders)
    is stripped before anything hashes or quantizes the graph: metaedge/onnx_clean.py.
    """
    spec = checkpoint.preprocess
    backbone = _Embedder(checkpoint.method.cpu(), support).eval()
    example = torch.zeros(2, spec.channels, spec.size, spec.size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter logs that torchvision is absent and warns about its own internals: noise for our users.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                backbone, (example,), str(path), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                dynamic_shapes={"x": {0: batch}}, opset_version=opset, optimize=True, verbose=False,
                external_data=False,  # one self-contained file: the bundle hashes and ships exactly that
            )  # fmt: skip
    except Exception as e:  # the exporter raises many types; all mean the same thing to the user
        raise ExportError(f"torch.onnx.export failed for this backbone: {e}") from None
    onnx_clean.strip_file(path)
    check_onnx(path)


def check_onnx(path: Path) -> None:
    """onnx.checker with full shape inference, strict: a graph that fails here fails on the board too."""
    import onnx

    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{path.name} does not pass onnx.checker: {e}") from None


def verification_data(checkpoint: ckpt.Checkpoint, verify_data: Sequence[str] | None) -> LoadedDataset:
    """Real images for the parity check: `verify_data`, else the checkpoint's held-out classes."""
    return _images(checkpoint, verify_data, "test", "--verify-data", "holds out no groups", "held-out data")


def calibration_images(checkpoint: ckpt.Checkpoint, calibration_data: Sequence[str] | None,
                       size: int = quantize.CALIBRATION_IMAGES) -> np.ndarray:  # fmt: skip
    """Images to calibrate int8 ranges on, uint8 (N, C, S, S): a fixed sample of `size` from `calibration_pool`."""
    return quantize.calibration_sample(calibration_pool(checkpoint, calibration_data), size)


def calibration_pool(checkpoint: ckpt.Checkpoint, calibration_data: Sequence[str] | None) -> np.ndarray:
    """Every image calibration may sample, uint8 (N, C, S, S): `calibration_data`, else the checkpoint's own
    training images (never its held-out groups, which parity and evaluation use)."""
    return _images(checkpoint, calibration_data, "train", "--calibration-data", "names no training groups",
                   "training data").pixels  # fmt: skip


def _images(checkpoint: ckpt.Checkpoint, given: Sequence[str] | None, part: str, option: str, none: str,
            what: str) -> LoadedDataset:  # fmt: skip
    """`given` roots, else the `part` ("train" or "test") groups of the checkpoint's own data, decoded."""
    if given:
        dataset = open_dataset(list(given))
    else:
        roots, groups = checkpoint.meta["data"]["roots"], checkpoint.meta.get("split", {}).get(part) or []
        if not groups:
            raise ExportError(f"the checkpoint {none}; pass {option} with real images")
        try:
            dataset = open_dataset(roots).subset(groups)
        except MetaedgeError as e:
            raise ExportError(f"cannot read the checkpoint's {what} ({e}); pass {option}") from None
    return dataset.load(checkpoint.preprocess)


def _graph(checkpoint: ckpt.Checkpoint, path: Path, opset: int, calibration: np.ndarray | None,
           support: bool = False) -> dict | None:  # fmt: skip
    """Export the query (or `support`: enrollment) graph to `path`; int8 when `calibration` images are given,
    then returns what quantize_int8 records about it."""
    if calibration is None:
        export_onnx(checkpoint, path, opset, support=support)
        return None
    float_path = path.with_name(f"{path.stem}-float.onnx")
    export_onnx(checkpoint, float_path, opset, support=support)
    return quantize.quantize_int8(float_path, path, calibration, INPUT)


def write_verification(reports: list[ParityReport], path: Path, force: bool, quantization: dict | None = None) -> None:
    """The parity gate's verdict: refuse (nothing written) when a report failed, unless `force`; else verify.json.

    quantization: what quantize_int8 recorded; where an int8 report failed and it shows why, the refusal says so.
    """
    failed = [r for r in reports if not r.passed]
    if failed and not force:
        details = "; ".join(f"{r.backend} ({r.precision}): {', '.join(r.failures)}{_accuracies(r)}" for r in failed)
        int8 = [f for r in failed if r.precision == "int8" for f in r.failures]
        why = quantize.diagnosis(quantization, int8) if any(r.precision == "int8" for r in failed) else None
        details += f" ({why})" if why else ""
        raise ExportError(f"parity check failed, nothing written: {details} (--force writes it anyway)")
    path.write_text(json.dumps({"reports": [r.to_dict() for r in reports], "forced": bool(failed)}, indent=2) + "\n")


def _accuracies(report: ParityReport) -> str:
    """Where agreement failed, both sides' accuracy on its episodes: disagreeing answers may be equally right."""
    if not any(f.startswith(AGREEMENT_FAILURE) for f in report.failures):
        return ""
    return (f" (accuracy on those episodes: reference {100 * report.reference_accuracy:.1f}%, this graph "
            f"{100 * report.candidate_accuracy:.1f}%)")


def engine_settings(profile: TargetProfile, spec, fp16: bool, int8: bool) -> trt_engine.EngineSettings:
    trt = profile.tensorrt
    if trt is None:
        raise ExportError(f"target {profile.name!r} has no GPU: TensorRT engines are for GPU targets")
    return trt_engine.EngineSettings(
        input_name=INPUT, input_shape=(spec.channels, spec.size, spec.size), min_batch=trt["min_batch"],
        opt_batch=trt["opt_batch"], max_batch=trt["max_batch"], workspace_mib=trt["workspace_mib"],
        fp16=fp16 or trt["fp16"], int8=int8 or trt["int8"], dla_core=trt["dla_core"],
    )  # fmt: skip


def inner_loop(method, defaults: AdaptationDefaults | None) -> dict:
    """The head adaptation the device runs: the learned inner loop where the method learned one (ANIL,
    Meta-SGD), else the given or default settings (ProtoNet; MAML, whose inner loop also adapts the backbone,
    which a device does not do: it runs the head part only).
    """
    if hasattr(method, "adaptation") and defaults is None:
        adapt = {**method.adaptation(), "learned": True}
        if adapt.pop("per_parameter_lr"):
            adapt["step_sizes_file"] = "head_step_sizes.safetensors"
        return adapt
    adapt = (defaults or AdaptationDefaults()).to_dict(learned=False)
    if getattr(method, "name", "") in ("maml", "fomaml") and defaults is None:
        adapt.update(steps=method.inner_steps, lr=method.inner_lr, weight_decay=0.0,
                     note="MAML adapts every parameter in training; the device adapts the head only")  # fmt: skip
    adapt["normalize_features"] = True
    return adapt


def write_step_sizes(method, path: Path) -> Path:
    """Meta-SGD's learned step sizes: lr_weight (D,), one per feature shared by all classes, and lr_bias (1,)."""
    from safetensors.numpy import save_file

    lr_w = method.lr_weight.detach().cpu().numpy().astype(np.float32)
    lr_b = method.lr_bias.detach().cpu().numpy().astype(np.float32).reshape(1)
    save_file({"lr_weight": lr_w, "lr_bias": lr_b}, str(path))
    return path


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    target: str = "x86-cpu",
    fmt: str = "onnx",
    fp16: bool = False,
    int8: bool = False,
    calibration_data: Sequence[str] | None = None,
    calibration_size: int | None = None,
    verify_data: Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    dry_run: bool = False,
    overwrite: bool = False,
    adaptation: AdaptationDefaults | None = None,
    parity_episodes: int = 200,
    views: int | None = None,
    enroll_views: int | None = None,
) -> ExportResult:
    """Export, verify against PyTorch, and write the bundle; nothing is written when verification fails.

    calibration_size: how many images int8 samples for its ranges (default quantize.CALIBRATION_IMAGES).
    """
    get_target(target)  # a mistyped option is named before anything reads the checkpoint
    size = quantize.check_calibration_size(calibration_size)
    if ckpt.read_meta(ckpt.resolve(checkpoint)).get("task") == "segment":  # a localisation bundle: export_segment.py
        from metaedge.export_segment import export_segment_checkpoint

        return export_segment_checkpoint(
            checkpoint, out, target=target, fmt=fmt, fp16=fp16, int8=int8, calibration_data=calibration_data,
            verify_data=verify_data, opset=opset, force=force, dry_run=dry_run, overwrite=overwrite,
            views=views, enroll_views=enroll_views, adaptation=adaptation, calibration_size=calibration_size,
        )  # fmt: skip
    t0 = time.perf_counter()
    if fmt not in ("onnx", "tensorrt"):
        raise ExportError(f"unknown format {fmt!r}; choose onnx or tensorrt")
    if fmt == "onnx" and fp16:
        raise ExportError("--fp16 sets the TensorRT engine's precision; use it with --format tensorrt")
    profile = get_target(target)
    # ONNX Runtime's int8 graph (quantize.py) is for its CPU provider; GPU boards quantize in TensorRT.
    if fmt == "onnx" and int8 and set(profile.onnxruntime_providers) != {"CPUExecutionProvider"}:
        providers = list(profile.onnxruntime_providers)
        raise ExportError(f"--int8 with --format onnx quantizes for ONNX Runtime's CPU provider; target "
                          f"{profile.name!r} runs {providers}: use --format tensorrt --int8")  # fmt: skip
    quantize_graph = fmt == "onnx" and int8
    loaded = ckpt.load(checkpoint)
    if views is not None:
        loaded.set_views(views)
    if enroll_views is not None:
        loaded.set_enroll_views(enroll_views)
    spec = loaded.preprocess
    settings = engine_settings(profile, spec, fp16, int8) if fmt == "tensorrt" else None
    if dry_run:
        if settings is None:
            raise ExportError("--dry-run prints the trtexec command of a TensorRT export; add --format tensorrt")
        command = trt_engine.trtexec_command("backbone.onnx", "backbone.engine", settings)
        return ExportResult(None, [], time.perf_counter() - t0, dry_run_command=command)
    if fmt == "tensorrt":
        trt_engine.import_tensorrt()  # fail before any work, with the install hint
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another --out or pass --overwrite")
    timings = {}
    with tempfile.TemporaryDirectory(prefix="metaedge-export-") as tmp:
        tmp = Path(tmp)
        onnx_path = tmp / "backbone.onnx"
        t = time.perf_counter()
        calib = spec.normalize(calibration_images(loaded, calibration_data, size)) if quantize_graph else None
        quantization = _graph(loaded, onnx_path, opset, calib)
        timings["onnx_export_s"] = time.perf_counter() - t  # with quantization, where asked
        t = time.perf_counter()
        data = verification_data(loaded, verify_data)
        session = create_session(onnx_path, ("CPUExecutionProvider",), profile.threads)
        pixels = spec.normalize(data.pixels)
        onnx_embeddings = run_batched(session, pixels, profile.max_batch)
        precision = "int8" if quantize_graph else "fp32"
        reports = [check_parity(loaded.method, onnx_embeddings, data, backend="onnxruntime-cpu", precision=precision,
                                episodes=parity_episodes)]  # fmt: skip
        files = {"backbone.onnx": onnx_path}
        support_embeddings, enroll_session = None, None
        if loaded.enrolls_apart:  # support images embedded differently from queries: a graph of their own
            enroll_path = tmp / "enroll.onnx"
            # int8 too where the query graph is: N views of every support image cost N passes at enrollment.
            _graph(loaded, enroll_path, opset, calib, support=True)
            enroll_session = create_session(enroll_path, ("CPUExecutionProvider",), profile.threads)
            support_embeddings = run_batched(enroll_session, pixels, profile.max_batch)
            reports.append(check_parity(loaded.method, support_embeddings, data, backend="onnxruntime-cpu (enroll)",
                                        precision=precision, episodes=parity_episodes, support=True))  # fmt: skip
            files["enroll.onnx"] = enroll_path
        engine_meta = None
        if settings is not None:
            engine_calib = spec.normalize(calibration_images(loaded, calibration_data, size)) if settings.int8 else None
            engine_path, cache_path = tmp / "backbone.engine", tmp / "timing.cache"
            engine = trt_engine.build_engine(onnx_path, settings, timing_cache=cache_path,
                                             calibration_images=engine_calib)  # fmt: skip
            engine_path.write_bytes(engine)
            runner = trt_engine.EngineRunner(engine, INPUT, OUTPUT)
            step = settings.max_batch
            engine_embeddings = np.concatenate([runner(pixels[i : i + step]) for i in range(0, len(pixels), step)])
            reports.append(check_parity(loaded.method, engine_embeddings, data, backend="tensorrt",
                                        precision=settings.precision, episodes=parity_episodes))  # fmt: skip
            files |= {"backbone.engine": engine_path, "timing.cache": cache_path}
            engine_meta = {"file": "backbone.engine", "precision": settings.precision, **trt_engine.device_info(),
                           "min_batch": settings.min_batch, "opt_batch": settings.opt_batch,
                           "max_batch": settings.max_batch, "dla_core": settings.dla_core}  # fmt: skip
        timings["verify_s"] = time.perf_counter() - t
        write_verification(reports, tmp / "verify.json", force, quantization)
        files["verify.json"] = tmp / "verify.json"
        # The open-set curve, per number of shots, on what the device computes (ONNX Runtime's embeddings): on
        # the validation groups where the checkpoint has them (never trained on, and not the held-out groups
        # that evaluation reports), else on the parity check's held-out images; the manifest says which.
        metric = getattr(loaded.method, "metric", "sqeuclidean")
        try:
            val = _images(loaded, None, "val", "--verify-data", "names no validation groups", "validation data")
            open_set = calibrate_sessions(val, session, enroll_session, metric, profile.max_batch, {"part": "val"})
        except (ExportError, CalibrationError):  # no validation groups, their images are not here, or too few
            open_set = calibrate_curve(onnx_embeddings, data, metric, support_embeddings=support_embeddings,
                                       source={"part": "given" if verify_data else "test"})  # fmt: skip
        adapt = inner_loop(loaded.method, adaptation)
        if "step_sizes_file" in adapt:
            files[adapt["step_sizes_file"]] = write_step_sizes(loaded.method, tmp / adapt["step_sizes_file"])
        manifest = _manifest(loaded, profile, opset, data, adapt, engine_meta, quantization, calib)
        manifest["open_set"] = open_set
        written = bundle_io.write(out, manifest, files, overwrite=overwrite)
    return ExportResult(written, reports, time.perf_counter() - t0, timings=timings)


def _manifest(loaded: ckpt.Checkpoint, profile: TargetProfile, opset: int, data: LoadedDataset,
              adaptation: dict, engine: dict | None, quantization: dict | None,
              calibration: np.ndarray | None = None) -> dict:  # fmt: skip
    import onnx
    import onnxruntime

    spec, meta, method = loaded.preprocess, loaded.meta, loaded.method
    metric = getattr(method, "metric", "sqeuclidean")
    scale = float(method.log_scale.detach().exp()) if metric == "cosine" else 1.0
    return {
        "model_id": model_id(loaded, int8=quantization is not None, calibration=calibration),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {**ckpt.versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "source_checkpoint": {"file": loaded.path.name, "episode": meta.get("episode"), "seed": meta.get("seed")},
        "algorithm": meta["algorithm"],
        "backbone": {
            **meta["backbone"],
            "file": "backbone.onnx",
            "opset": opset,
            "views": loaded.views,  # test-time views inside the graph (models/views.py)
            "precision": "int8" if quantization else "fp32",
            "quantization": quantization,
            # Support images through more views: a second graph, run once per enrolled image, never per query.
            "enroll": {"file": "enroll.onnx", "views": loaded.enroll_views} if loaded.enrolls_apart else None,
            "input": {"name": INPUT, "shape": ["batch", spec.channels, spec.size, spec.size], "dtype": "float32"},
            "output": {"name": OUTPUT, "shape": ["batch", method.backbone.embedding_dim], "dtype": "float32"},
        },  # fmt: skip
        "preprocess": spec.to_dict(),
        "embedding_dim": method.backbone.embedding_dim,
        "metric": {"name": metric, "scale": scale},
        "adaptation": adaptation,
        "training": {"data": meta.get("data"), "split": meta.get("split")},
        "verification": {"groups": sorted(set(data.class_groups)), "images": len(data.pixels)},
        "target": profile.to_dict(),
        "engine": engine,
    }
