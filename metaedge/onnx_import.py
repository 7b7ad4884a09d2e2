"""`metaedge export --onnx`: a feature extractor trained elsewhere (any ONNX graph, one image batch in, one
embedding per image out) wrapped into a verified bundle like the ones metaedge exports from its own checkpoints.

What it does to the graph, and nothing more: the input is renamed `images` and the output `embeddings` (the
names every bundle uses); an output that is still a feature map, (batch, D, h, w), is global-average-pooled
*inside the graph* (GlobalAveragePool then Flatten, the pooling torchvision's and timm's classifiers start with),
so the device and every check see one D-vector per image.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from metaedge import bundle as bundle_io
from metaedge import kernels, onnx_clean, quantize
from metaedge.data import LoadedDataset, PreprocessSpec, open_dataset
from metaedge.data.preprocess import PRESETS, preprocess_settings
from metaedge.errors import MetaedgeError
from metaedge.exporter import (
    INPUT,
    OUTPUT,
    AdaptationDefaults,
    ExportError,
    ExportResult,
    check_onnx,
    write_verification,
)
from metaedge.open_set import SHOTS, CalibrationError, calibrate_curve
from metaedge.ort import create_session, run_batched
from metaedge.parity import ParityReport, compare_embeddings
from metaedge.targets import get_target

METRICS = ("cosine", "sqeuclidean")


class GraphError(ExportError):
    """An ONNX graph that is not a feature extractor metaedge can wrap (inputs, outputs, types, shapes)."""


def _dims(value_info) -> list[int | str | None]:
    """A graph input's or output's shape: ints where static, the symbol (or None) where dynamic."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]  # fmt: skip


def inspect_graph(model, spec: PreprocessSpec) -> dict:
    """Check that `model` (an onnx.ModelProto) takes one float NCHW image batch and gives one float output per
    image, of rank 2 (batch, D) or rank 4 (batch, D, h, w). Returns {input, output, output_rank, batch}.
    Raises GraphError naming the first thing wrong."""
    import onnx

    initialised = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialised]  # old exporters list weights as inputs
    outputs = list(model.graph.output)
    if len(inputs) != 1:
        raise GraphError(f"the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); a feature "
                         "extractor takes one: a batch of images")  # fmt: skip
    if len(outputs) != 1:
        raise GraphError(f"the graph has {len(outputs)} outputs ({', '.join(o.name for o in outputs)}); a feature "
                         "extractor gives one: an embedding per image")  # fmt: skip
    (inp,), (out,) = inputs, outputs
    for role, v in (("input", inp), ("output", out)):
        elem = v.type.tensor_type.elem_type
        if elem != onnx.TensorProto.FLOAT:
            raise GraphError(f"the graph's {role} {v.name!r} is {onnx.TensorProto.DataType.Name(elem)}, not FLOAT "
                             "(float32)")  # fmt: skip
    shape = _dims(inp)
    if len(shape) != 4:
        raise GraphError(f"the graph's input {inp.name!r} has shape {shape}; expected (batch, channels, height, width)")
    batch, channels, height, width = shape
    if isinstance(channels, int) and channels != spec.channels:
        raise GraphError(f"the graph takes {channels}-channel images, the preprocessing gives {spec.channels}")
    for side in (height, width):
        if isinstance(side, int) and side != spec.size:
            raise GraphError(f"the graph takes {height}x{width} images, the preprocessing gives "
                             f"{spec.size}x{spec.size}: set its size to match")  # fmt: skip
    if isinstance(batch, int) and batch != 1:
        raise GraphError(f"the graph's batch size is fixed at {batch}; export it with a dynamic batch (or batch 1)")
    rank = len(_dims(out))
    if rank not in (2, 4):
        raise GraphError(f"the graph's output {out.name!r} has shape {_dims(out)}; expected (batch, D) or a feature "
                         "map (batch, D, h, w), which is then average-pooled")  # fmt: skip
    return {"input": inp.name, "output": out.name, "output_rank": rank, "batch": batch}


def wrap_graph(model, info: dict):
    """The graph with the bundle's input and output names and, for a feature-map output, global average pooling
    built in: images (batch, C, S, S) -> embeddings (batch, D)."""
    import onnx
    from onnx import helper

    graph = model.graph
    for node in graph.node:
        node.input[:] = [INPUT if name == info["input"] else name for name in node.input]
    for v in graph.input:
        if v.name == info["input"]:
            v.name = INPUT
    out = graph.output[0]
    if info["output_rank"] == 4:
        graph.node.extend([helper.make_node("GlobalAveragePool", [out.name], ["metaedge_pooled"]),
                           helper.make_node("Flatten", ["metaedge_pooled"], [OUTPUT], axis=1)])  # fmt: skip
    else:
        graph.node.append(helper.make_node("Identity", [out.name], [OUTPUT]))
    graph.output.remove(out)
    graph.output.append(helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["batch", None]))
    return model


def resolve_spec(preprocess: str, model) -> PreprocessSpec:
    """--preprocess PRESET|FILE.json as a spec; a preset takes the graph's own input side where it is static."""
    settings = preprocess_settings(preprocess)
    if preprocess in PRESETS:
        inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        side = _dims(inputs[0])[2] if len(inputs) == 1 and len(_dims(inputs[0])) == 4 else None
        if isinstance(side, int) and side >= 8:
            settings["size"] = side
    if "size" not in settings:
        raise MetaedgeError(f"{preprocess}: the preprocessing names no size; add \"size\" to it")
    return PreprocessSpec.from_dict(settings)


def compare(reference: np.ndarray, candidate: np.ndarray, data: LoadedDataset, metric: str, *, backend: str,
            precision: str, episodes: int = 200, way: int = 5, shot: int = 1, query: int = 5,
            seed: int = 0) -> ParityReport:  # fmt: skip
    """parity's gate for a graph without a PyTorch model: `candidate` (N, D) against `reference` (N, D),
    embeddings of the same images, the few-shot decisions made by prototypes as the runtime makes them."""

    def decide(support_z, support_labels, query_z, way):
        protos = kernels.prototypes(support_z, support_labels, way, normalize=metric == "cosine")
        return kernels.logits(query_z, protos, metric=metric, scale=1.0).argmax(1)

    return compare_embeddings(reference, candidate, data, decide, backend=backend, precision=precision,
                              episodes=episodes, way=way, shot=shot, query=query, seed=seed,
                              reference_name="the reference graph")  # fmt: skip


def import_onnx(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    preprocess: str,
    verify_data: Sequence[str],
    metric: str = "cosine",
    target: str = "x86-cpu",
    int8: bool = False,
    calibration_data: Sequence[str] | None = None,
    calibration_size: int | None = None,
    force: bool = False,
    overwrite: bool = False,
    parity_episodes: int = 200,
) -> ExportResult:
    """Wrap, check and verify an external ONNX feature extractor on real images (`verify_data`: class/image
    folders or zips), calibrate the open-set threshold on them, and write the bundle; nothing on failure.

    The fp32 check holds the wrapped graph to the graph as given (run by ONNX Runtime, pooled in numpy where
    it gives a feature map); with `int8`, the quantized graph to the fp32 one at the int8 tolerances.
    Calibration images for int8: `calibration_data`, else the verification images (an external graph comes
    without its training data); a fixed sample of `calibration_size` of them (default: CALIBRATION_IMAGES).
    """
    import onnx

    t0 = time.perf_counter()
    onnx_path, out = Path(onnx_path), Path(out)
    size = quantize.check_calibration_size(calibration_size)
    if metric not in METRICS:
        raise ExportError(f"unknown metric {metric!r}; choose {' or '.join(METRICS)}")
    if not verify_data:
        raise ExportError("--onnx needs --verify-data: real images (class/image folders) to check the graph on")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another --out or pass --overwrite")
    profile = get_target(target)
    if int8 and set(profile.onnxruntime_providers) != {"CPUExecutionProvider"}:
        raise ExportError(f"--int8 quantizes for ONNX Runtime's CPU provider; target {profile.name!r} is not a CPU "
                          "target")  # fmt: skip
    if not onnx_path.is_file():
        raise ExportError(f"{onnx_path}: no such ONNX file")
    try:
        model = onnx.load(str(onnx_path))
    except Exception as e:  # protobuf's decode errors have no common base worth naming
        raise ExportError(f"{onnx_path}: not a readable ONNX model ({e})") from None
    spec = resolve_spec(preprocess, model)
    info = inspect_graph(model, spec)
    data = open_dataset(list(verify_data)).load(spec)
    if data.num_classes < 2:
        raise ExportError(f"--verify-data has {data.num_classes} class; the checks need at least two")
    x = spec.normalize(data.pixels)
    timings = {}
    with tempfile.TemporaryDirectory(prefix="metaedge-import-") as tmp:
        tmp = Path(tmp)
        float_path = tmp / ("backbone-float.onnx" if int8 else "backbone.onnx")
        t = time.perf_counter()
        onnx.save(wrap_graph(model, info), str(float_path))
        onnx_clean.strip_file(float_path)  # exporters' notes on the machine that made the graph: not shipped
        check_onnx(float_path)
        try:
            given = run_batched(create_session(onnx_path), x, 1 if info["batch"] == 1 else profile.max_batch)
        except Exception as e:  # onnxruntime's own failure types: the graph does not run on these images
            raise GraphError(f"{onnx_path}: ONNX Runtime cannot run it on the --verify-data images ({e})") from None
        reference = given.reshape(len(given), given.shape[1], -1).mean(axis=2) if given.ndim == 4 else given
        max_batch = 1 if info["batch"] == 1 else profile.max_batch
        session = create_session(float_path, ("CPUExecutionProvider",), profile.threads)
        embeddings = run_batched(session, x, max_batch)
        reports = [compare(reference, embeddings, data, metric, backend="onnxruntime-cpu (wrapped graph)",
                           precision="fp32", episodes=parity_episodes)]  # fmt: skip
        quantization, onnx_file = None, float_path
        if int8:
            calib = open_dataset(list(calibration_data)).load(spec).pixels if calibration_data else data.pixels
            onnx_file = tmp / "backbone.onnx"
            calib = spec.normalize(quantize.calibration_sample(calib, size))
            quantization = quantize.quantize_int8(float_path, onnx_file, calib, INPUT)
            if not calibration_data:
                quantization["calibration"] = "a sample of the --verify-data images"
            session = create_session(onnx_file, ("CPUExecutionProvider",), profile.threads)
            quantized = run_batched(session, x, max_batch)
            reports.append(compare(embeddings, quantized, data, metric, backend="onnxruntime-cpu (int8 vs fp32)",
                                   precision="int8", episodes=parity_episodes))  # fmt: skip
            embeddings = quantized
        timings["verify_s"] = time.perf_counter() - t
        write_verification(reports, tmp / "verify.json", force, quantization)
        # Calibrated on what the device computes: the bundle graph's embeddings of the verification classes.
        try:
            # A small --verify-data still calibrates: strangers from half its classes at most, and the numbers of
            # shots that leave 5 queries in its smallest class.
            strangers = max(1, min(5, data.num_classes // 2))
            shots = [s for s in SHOTS if s + 5 <= np.bincount(data.labels).min()] or [1]
            open_set = calibrate_curve(embeddings, data, metric, strangers=strangers, shots=shots,
                                       source={"part": "given"})  # fmt: skip
        except CalibrationError as e:
            raise ExportError(f"--verify-data cannot calibrate the open-set threshold: {e}") from None
        manifest = _manifest(onnx_path, model, spec, info, metric, embeddings.shape[1], data, profile, quantization,
                             max_batch, calib if int8 else None)  # fmt: skip
        manifest["open_set"] = open_set
        files = {"backbone.onnx": onnx_file, "verify.json": tmp / "verify.json"}
        written = bundle_io.write(out, manifest, files, overwrite=overwrite)
    return ExportResult(written, reports, time.perf_counter() - t0, timings=timings)


def _manifest(onnx_path: Path, model, spec: PreprocessSpec, info: dict, metric: str, dim: int, data: LoadedDataset,
              profile, quantization: dict | None, max_batch: int, calibration: np.ndarray | None) -> dict:  # fmt: skip
    import onnx
    import onnxruntime

    from metaedge.checkpoint import versions

    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in onnx_path.stem)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    target = {**profile.to_dict(), "max_batch": min(max_batch, profile.max_batch)}
    return {
        "model_id": f"onnx-{stem}-{digest[:12]}" + (quantize.id_suffix(calibration) if quantization else ""),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "source_onnx": {"file": onnx_path.name, "sha256": digest, "producer": model.producer_name or None,
                        "input": info["input"], "output": info["output"]},  # fmt: skip
        "algorithm": {"name": "protonet", "config": {"metric": metric}},
        "backbone": {
            "name": f"onnx:{stem}", "kwargs": {}, "file": "backbone.onnx", "opset": opset, "views": 1,
            "precision": "int8" if quantization else "fp32", "quantization": quantization, "enroll": None,
            "pooling": "global average (GlobalAveragePool + Flatten added to the graph)" if info["output_rank"] == 4
            else "none (the graph gives one vector per image)",
            "input": {"name": INPUT, "shape": ["batch", spec.channels, spec.size, spec.size], "dtype": "float32"},
            "output": {"name": OUTPUT, "shape": ["batch", dim], "dtype": "float32"},
        },  # fmt: skip
        "preprocess": spec.to_dict(),
        "embedding_dim": dim,
        "metric": {"name": metric, "scale": 1.0},
        "adaptation": {**AdaptationDefaults().to_dict(learned=False), "normalize_features": True},
        "training": None,
        "verification": {"roots": sorted({str(s) for s in data.class_groups}), "classes": data.num_classes,
                         "images": len(data.pixels)},  # fmt: skip
        "target": target,
        "engine": None,
    }
