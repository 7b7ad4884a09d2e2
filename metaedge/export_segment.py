"""Export of a segmentation checkpoint to a localisation bundle (`task: "locate"`), verified on real scenes.

Three ONNX graphs (metaedge/locate.py says how the device chains them):
- prototype.onnx, the manifest's `backbone`: references (batch, 3, 32, 32) -> prototypes (batch, D), the
  method's masked pooling; `Runtime.enroll` stores its output in the gallery as it stores embeddings.
- dense.onnx: scenes (batch, 3, H, W) -> feature maps (batch, D, H/s, W/s); H and W dynamic, multiples of s.
- decoder.onnx: (scenes, feature maps, cosine maps (batch, C, H/s, W/s)) -> mask logits (batch, C, H, W),
  C dynamic: the light decoder, or for a decoder-free model its scaled cosine upsampled bilinearly.

Before anything is written, ONNX Runtime (through the very `Locator` the runtime uses, so the cosine runs in
`kernels.logits`) is held against PyTorch's `mask_logits` on generated scenes of the held-out alphabets,
coloured and one-colour, at clutter 4 and 32: the largest difference of mask probabilities, and the IoU of
the two masks per scene (their agreement), beside each one's IoU with the truth. Then the "is it in this
scene" score is calibrated on scenes with and without the target: the threshold accepts 95% of
scenes that hold it; the manifest records the false-positive rate on scenes without it there.
The score is the mask's highest probability (locate.py); a decoder-free head makes it the peak cosine, scaled.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from metaedge import bundle as bundle_io
from metaedge import checkpoint as ckpt
from metaedge import onnx_clean, quantize
from metaedge.data.clutter import REFERENCE_SIZE, ClutterEpisodes, Glyphs, SceneBatch, scene_set
from metaedge.errors import MetaedgeError
from metaedge.evaluate_segment import REFERENCE_SPEC, SCENE_SPEC, THRESHOLD, held_out_glyphs, scenes_to_tensors
from metaedge.locate import DECODER_INPUTS, DECODER_OUTPUT, DENSE_INPUT, DENSE_OUTPUT, MAX_SIDE, MIN_SIDE, TASK, Locator
from metaedge.methods.segment import ProtoSeg
from metaedge.ort import create_session, run_batched
from metaedge.targets import get_target

PROTOTYPE_INPUT, PROTOTYPE_OUTPUT = "images", "embeddings"  # the names a classification backbone's graph uses
# Mask agreement: mean IoU between the ONNX Runtime and PyTorch masks over the parity scenes. int8 is held to
# classification's int8 prediction agreement (parity.py); fp32 must give the same masks up to rounding.
TOLERANCES = {"fp32": {"max_abs_diff": 1e-3, "min_agreement": 0.99},
              "int8": {"max_abs_diff": None, "min_agreement": 0.95}}  # fmt: skip
PARITY_CLUTTER = (4, 32)
# Scenes the dense graph's int8 ranges are measured on: each holds dozens of glyphs, so far fewer than the
# classifier's calibration images (quantize.CALIBRATION_IMAGES) cover the ranges.
CALIBRATION_SCENES = 128
ACCEPT_PRESENT = 0.95  # the open-set threshold keeps this share of the scenes that hold the target
DECODE_KEEP = 0.99  # the decode floor keeps this share of the accepted scenes that hold the target


@dataclass
class LocateParityReport:
    """ONNX Runtime vs PyTorch on `images` scenes. max_abs_diff: of mask probabilities; agreement: mean IoU of
    the two masks (threshold 0.3) per scene, min_agreement the worst scene; iou_*: mean IoU with the truth;
    min_cosine: the least cosine similarity between the two paths' prototypes."""

    backend: str
    precision: str
    images: int
    max_abs_diff: float
    agreement: float
    min_agreement: float
    iou_onnx: float
    iou_torch: float
    min_cosine: float
    tolerances: dict
    failures: list[str]
    episodes: int = 0  # the CLI's parity line names episodes; every scene is one

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


class _Prototype(torch.nn.Module):
    def __init__(self, method: ProtoSeg) -> None:
        super().__init__()
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.embed(x)


class _Dense(_Prototype):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.dense(x)


class _Decoder(_Prototype):
    def forward(self, scenes: torch.Tensor, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.method.decoder is not None:
            return self.method.decoder(scenes, features, scores)
        return self.method.coarse_logits(scores, scenes.shape[-2:])


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict, opset: int) -> None:  # fmt: skip
    """One graph with the torch.export-based exporter, as metaedge/exporter.py does, then stripped and checked."""
    from metaedge.exporter import ExportError, check_onnx

    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)  # "axis name batch will not be used": shared dims, by design
            torch.onnx.export(module.eval(), args, str(path), dynamo=True, input_names=inputs, output_names=outputs,
                              dynamic_shapes=dynamic, opset_version=opset, optimize=True, verbose=False,
                              external_data=False)  # fmt: skip
    except Exception as e:  # the exporter raises many types; all mean the same thing to the user
        raise ExportError(f"torch.onnx.export failed for {path.name}: {e}") from None
    onnx_clean.strip_file(path)
    check_onnx(path)


def export_graphs(method: ProtoSeg, out: Path, opset: int) -> dict[str, Path]:
    """prototype.onnx, dense.onnx and decoder.onnx of an eval-mode ProtoSeg into the folder `out`."""
    method = method.cpu().eval()
    s, d = method.stride, method.backbone.embedding_dim
    batch = torch.export.Dim("batch", min=1, max=4096)
    h, w = torch.export.Dim("h", min=2, max=4096), torch.export.Dim("w", min=2, max=4096)
    classes = torch.export.Dim("classes", min=1, max=65536)
    scene = torch.zeros(2, 3, 24 * s, 20 * s)
    files = {name: out / name for name in ("prototype.onnx", "dense.onnx", "decoder.onnx")}
    _export(_Prototype(method), (torch.zeros(2, 3, REFERENCE_SIZE, REFERENCE_SIZE),), files["prototype.onnx"],
            [PROTOTYPE_INPUT], [PROTOTYPE_OUTPUT], {"x": {0: batch}}, opset)  # fmt: skip
    # The scene's sides as s * (cells): the exporter then knows they divide by the stride.
    scene_dims = {0: batch, 2: s * h, 3: s * w}
    _export(_Dense(method), (scene,), files["dense.onnx"], [DENSE_INPUT], [DENSE_OUTPUT], {"x": scene_dims}, opset)
    features, scores = torch.zeros(2, d, 24, 20), torch.zeros(2, 3, 24, 20)
    dynamic = {"scenes": scene_dims, "features": {0: batch, 2: h, 3: w}, "scores": {0: batch, 1: classes, 2: h, 3: w}}
    _export(_Decoder(method), (scene, features, scores), files["decoder.onnx"], list(DECODER_INPUTS),
            [DECODER_OUTPUT], dynamic, opset)  # fmt: skip
    return files


def settings_for(method: ProtoSeg, threshold: float | None = None) -> dict:
    """The manifest's `locate` entry, without the files' descriptions and calibration."""
    return {"stride": method.stride, "scene_size": SCENE_SPEC.size, "reference_size": REFERENCE_SIZE,
            "scene_preprocess": SCENE_SPEC.to_dict(), "mask_threshold": THRESHOLD, "threshold": threshold,
            "max_side": MAX_SIDE, "min_side": MIN_SIDE, "head": "decoder" if method.decoder is not None else "cosine",
            "score": "the highest foreground probability of the class's mask in the scene"}  # fmt: skip


@torch.no_grad()
def _torch_masks(method: ProtoSeg, batch: SceneBatch) -> tuple[np.ndarray, np.ndarray]:
    """Each scene against its own references in PyTorch -> (probabilities (B, H, W), prototypes (B, D))."""
    scenes, references = scenes_to_tensors(batch)
    protos = method.prototypes(references)
    return torch.sigmoid(method.mask_logits(scenes, protos)[:, 0]).numpy(), protos[:, 0].numpy()


def _onnx_masks(locator: Locator, proto_session,
                batch: SceneBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The device's path, scene by scene -> (probabilities (B, H, W), prototypes (B, D), scores (B,), peak
    cosine similarities (B,): what the decode floor is compared with)."""
    scenes = SCENE_SPEC.normalize(batch.scenes)
    refs = REFERENCE_SPEC.normalize(batch.references)  # (B, K, 3, 32, 32)
    b, k = refs.shape[:2]
    # The gallery's prototype of a class: the mean of its enrolled embeddings.
    protos = run_batched(proto_session, refs.reshape(b * k, *refs.shape[2:])).reshape(b, k, -1).mean(axis=1)
    probs, scores, peaks = [], [], []
    for i in range(b):
        features = locator.features(scenes[i : i + 1])
        cosine = locator.cosine(features, protos[i : i + 1])
        p = 1.0 / (1.0 + np.exp(-locator.logits(scenes[i : i + 1], features, cosine)[0, 0]))
        probs.append(p.astype(np.float32))
        scores.append(p.max())  # the runtime's score (locate.py): the mask's highest probability
        peaks.append(cosine.max())
    return np.stack(probs), protos, np.asarray(scores), np.asarray(peaks)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """bool (B, H, W) twice -> IoU per scene (B,); two empty masks agree (1)."""
    inter, union = (a & b).sum(axis=(1, 2)), (a | b).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def parity_scenes(glyphs: Glyphs, per_set: int, seed: int = 0) -> SceneBatch:
    """`per_set` seeded scenes at each of clutter 4 and 32, coloured and one-colour (the evaluation sets' first)."""
    sets = [scene_set(glyphs, clutter=c, count=per_set, seed=seed, one_colour=one)
            for c in PARITY_CLUTTER for one in (False, True)]  # fmt: skip
    return SceneBatch(*(np.concatenate([getattr(s, f) for s in sets]) for f in SceneBatch.__dataclass_fields__))


def check_parity(method: ProtoSeg, locator: Locator, proto_session, batch: SceneBatch, precision: str,
                 backend: str = "onnxruntime-cpu") -> LocateParityReport:  # fmt: skip
    torch_prob, torch_protos = _torch_masks(method, batch)
    onnx_prob, onnx_protos, _, _ = _onnx_masks(locator, proto_session, batch)
    torch_mask, onnx_mask = torch_prob > THRESHOLD, onnx_prob > THRESHOLD
    agree = _iou(torch_mask, onnx_mask)
    diff = float(np.abs(torch_prob - onnx_prob).max())
    norms = np.linalg.norm(torch_protos, axis=1) * np.linalg.norm(onnx_protos, axis=1)
    cosine = float(((torch_protos * onnx_protos).sum(axis=1) / np.maximum(norms, 1e-12)).min())
    tol = TOLERANCES[precision]
    failures = []
    if tol["max_abs_diff"] is not None and not diff <= tol["max_abs_diff"]:
        failures.append(f"max |probability diff| {diff:.2e} > {tol['max_abs_diff']}")
    if not float(agree.mean()) >= tol["min_agreement"]:
        failures.append(f"mean mask agreement (IoU) {agree.mean():.4f} < {tol['min_agreement']}")
    return LocateParityReport(
        backend=backend, precision=precision, images=len(batch), max_abs_diff=diff, agreement=float(agree.mean()),
        min_agreement=float(agree.min()), iou_onnx=float(_iou(onnx_mask, batch.masks).mean()),
        iou_torch=float(_iou(torch_mask, batch.masks).mean()), min_cosine=cosine, tolerances=tol, failures=failures,
        episodes=len(batch),
    )  # fmt: skip


def calibrate_presence(locator: Locator, proto_session, glyphs: Glyphs, clutter: list[int], per_level: int,
                       source: dict, seed: int = 0) -> dict:  # fmt: skip
    """The "not in this scene" threshold: scores (the mask's highest probability) on `per_level` scenes with
    the target and as many without (seeded sets apart from parity's), per clutter level, half one-colour.
    The threshold keeps ACCEPT_PRESENT of the present scenes; the false-positive rate is measured on the absent.

    The decode floor (locate.py) is the peak cosine similarity that DECODE_KEEP of the accepted present scenes
    reach: a class under it in a scene is not decoded. `decoded_absent` is the share of the absent scenes whose
    class would still be decoded (the lower, the less decoding a scene of many enrolled classes costs)."""
    scores, peaks = {True: [], False: []}, {True: [], False: []}
    for c in clutter:
        for one in (False, True):
            for has in (True, False):
                batch = scene_set(glyphs, clutter=c, count=per_level, seed=seed + 1, one_colour=one, present=has)
                _, _, score, peak = _onnx_masks(locator, proto_session, batch)
                scores[has].append(score)
                peaks[has].append(peak)
    present, absent = np.concatenate(scores[True]), np.concatenate(scores[False])
    peak_present, peak_absent = np.concatenate(peaks[True]), np.concatenate(peaks[False])
    threshold = float(np.quantile(present, 1.0 - ACCEPT_PRESENT))
    floor = float(np.quantile(peak_present[present >= threshold], 1.0 - DECODE_KEEP))
    # AUROC: the chance a scene with the target outscores one without (ties count half).
    auroc = float((present[:, None] > absent[None]).mean() + 0.5 * (present[:, None] == absent[None]).mean())
    return {"threshold": threshold, "accept_present": ACCEPT_PRESENT,
            "true_positive_rate": float((present >= threshold).mean()),
            "false_positive_rate": float((absent >= threshold).mean()), "auroc": auroc,
            "decode_floor": floor, "decode_keep": DECODE_KEEP,
            "true_positive_rate_decoded": float(((present >= threshold) & (peak_present >= floor)).mean()),
            "decoded_absent": float((peak_absent >= floor).mean()),
            "scenes_present": int(len(present)), "scenes_absent": int(len(absent)), "clutter": list(clutter),
            "source": source}  # fmt: skip


def export_segment_checkpoint(checkpoint, out, *, target: str = "x86-cpu", fmt: str = "onnx", fp16: bool = False,
                              int8: bool = False, calibration_data=None, verify_data=None, opset: int = 18,
                              force: bool = False, dry_run: bool = False, overwrite: bool = False,
                              parity_scenes_per_set: int = 50, calibration_scenes: int = 50,
                              **unsupported):  # fmt: skip
    """A segmentation checkpoint -> a localisation bundle at `out`, parity-checked and calibrated; nothing is
    written when a check fails (unless `force`). Returns exporter.ExportResult."""
    from metaedge.exporter import ExportError, ExportResult, model_id

    t0 = time.perf_counter()
    given = [k for k, v in unsupported.items() if v not in (None, False)] + [
        name for name, v in (("--format tensorrt", fmt != "onnx"), ("--fp16", fp16), ("--dry-run", dry_run),
                             ("--calibration-data", calibration_data), ("--verify-data", verify_data))
        if v]  # fmt: skip
    if given:
        raise ExportError(f"a localisation bundle is ONNX for ONNX Runtime with generated scenes to verify; "
                          f"{', '.join(given)} is for classification exports")  # fmt: skip
    profile = get_target(target)
    if int8 and set(profile.onnxruntime_providers) != {"CPUExecutionProvider"}:
        raise ExportError(f"--int8 quantizes for ONNX Runtime's CPU provider; target {profile.name!r} is not CPU-only")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another --out or pass --overwrite")
    loaded = ckpt.load(checkpoint)
    method, meta = loaded.method, loaded.meta
    if not isinstance(method, ProtoSeg):
        raise ExportError(f"{loaded.path}: a segment checkpoint whose method is not protoseg")
    method.eval()
    try:
        test = held_out_glyphs(meta, str(loaded.path), None, None, "test")
    except MetaedgeError as e:
        raise ExportError(f"cannot make the parity scenes: {e}") from None
    try:
        val, part = held_out_glyphs(meta, str(loaded.path), None, None, "val"), "val"
    except MetaedgeError:  # no validation alphabets: calibrate on the held-out ones, and say so
        val, part = test, "test"
    with tempfile.TemporaryDirectory(prefix="metaedge-export-") as tmp:
        tmp = Path(tmp)
        files = export_graphs(method, tmp, opset)
        quantization = None
        if int8:
            train_glyphs = Glyphs.from_dataset(_train_dataset(meta))
            episodes = ClutterEpisodes(train_glyphs, meta["segment"]["clutter"], one_colour=0.5, seed=12345)
            calib = SCENE_SPEC.normalize(episodes.batch(range(CALIBRATION_SCENES)).scenes)
            quantized = tmp / "dense-int8.onnx"
            quantization = quantize.quantize_int8(files["dense.onnx"], quantized, calib, DENSE_INPUT)
            files["dense.onnx"] = quantized
        settings = settings_for(method)
        threads = profile.threads
        locator = Locator(files["dense.onnx"], files["decoder.onnx"], settings, threads=threads)
        proto_session = create_session(files["prototype.onnx"], ("CPUExecutionProvider",), threads)
        precision = "int8" if int8 else "fp32"
        report = check_parity(method, locator, proto_session, parity_scenes(test, parity_scenes_per_set), precision)
        if not report.passed and not force:
            raise ExportError(f"parity check failed, nothing written: {', '.join(report.failures)} "
                              "(--force writes it anyway)")  # fmt: skip
        open_set = calibrate_presence(locator, proto_session, val, list(meta["segment"]["clutter"]),
                                      calibration_scenes, {"part": part, "groups": sorted(set(val.class_groups))})
        settings["threshold"], settings["decode_floor"] = open_set["threshold"], open_set["decode_floor"]
        (tmp / "verify.json").write_text(json.dumps({"reports": [report.to_dict()], "forced": not report.passed},
                                                    indent=2) + "\n")  # fmt: skip
        import onnx
        import onnxruntime

        d = method.backbone.embedding_dim
        manifest = {
            "task": TASK,
            "model_id": model_id(loaded, int8=int8),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {**ckpt.versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
            "source_checkpoint": {"file": loaded.path.name, "episode": meta.get("episode"), "seed": meta.get("seed")},
            "algorithm": meta["algorithm"],
            # What Runtime.enroll runs: references in, prototypes out, into the gallery as embeddings are.
            "backbone": {**meta["backbone"], "file": "prototype.onnx", "opset": opset, "precision": "fp32",
                         "enroll": None, "views": 1,
                         "input": {"name": PROTOTYPE_INPUT, "shape": ["batch", 3, REFERENCE_SIZE, REFERENCE_SIZE],
                                   "dtype": "float32"},
                         "output": {"name": PROTOTYPE_OUTPUT, "shape": ["batch", d], "dtype": "float32"}},
            "preprocess": REFERENCE_SPEC.to_dict(),
            "embedding_dim": d,
            "metric": {"name": "cosine", "scale": 1.0},
            "locate": {
                **settings,
                "precision": precision, "quantization": quantization,
                "dense": {"file": "dense.onnx", "input": {"name": DENSE_INPUT, "shape": ["batch", 3, "H", "W"]},
                          "output": {"name": DENSE_OUTPUT, "shape": ["batch", d, "H/stride", "W/stride"]},
                          "dynamic": "H and W: any multiples of the stride"},
                "decoder": {"file": "decoder.onnx", "inputs": list(DECODER_INPUTS), "output": DECODER_OUTPUT,
                            "shape": ["batch", "classes", "H", "W"]},
                "open_set": open_set,
            },
            "open_set": None,  # classification's curve; a localisation bundle's calibration is under `locate`
            "training": {"data": meta.get("data"), "split": meta.get("split"), "segment": meta.get("segment"),
                         "episode": meta.get("episode"), "train_seconds": meta.get("train_seconds")},
            "verification": {"groups": sorted(set(test.class_groups)), "scenes": report.images,
                             "clutter": list(PARITY_CLUTTER), "colours": ["coloured", "one-colour"]},
            "target": profile.to_dict(),
            "engine": None,
        }  # fmt: skip
        names = {"prototype.onnx": files["prototype.onnx"], "dense.onnx": files["dense.onnx"],
                 "decoder.onnx": files["decoder.onnx"], "verify.json": tmp / "verify.json"}  # fmt: skip
        written = bundle_io.write(out, manifest, names, overwrite=overwrite)
    return ExportResult(written, [report], time.perf_counter() - t0)


def _train_dataset(meta: dict):
    from metaedge.data import open_dataset

    return open_dataset(meta["data"]["roots"]).subset(meta["split"]["train"])
