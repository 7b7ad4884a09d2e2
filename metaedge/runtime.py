"""The on-device runtime: embed images with the exported backbone, enroll classes into a gallery, classify."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metaedge import bundle as bundle_io
from metaedge import kernels
from metaedge.errors import DataError
from metaedge.images import ImageInput, preprocess
from metaedge.locate import Localization, Locator, require_task
from metaedge.locate import locate as locate_scene
from metaedge.open_set import threshold_for
from metaedge.ort import create_session, run_batched

REFERENCE_BUNDLE = Path(__file__).resolve().parent / "reference" / "bundle"
_MANIFEST_THRESHOLD = object()  # sentinel: "use the bundle's calibrated open-set threshold"


@dataclass
class Prediction:
    """One image's answer. `label` is None when the open-set threshold rejected every class ("unknown").

    score: similarity to the best class's prototype (cosine similarity, or minus the squared distance).
    top_k: [(label, score), ...] best first, over the enrolled classes.
    """

    label: str | None
    score: float
    top_k: list[tuple[str, float]]

    @property
    def unknown(self) -> bool:
        return self.label is None

    def to_dict(self) -> dict:
        return {"label": self.label, "unknown": self.unknown, "score": self.score,
                "top_k": [{"label": lbl, "score": s} for lbl, s in self.top_k]}  # fmt: skip


@dataclass
class EnrollResult:
    label: str
    images: int
    total_embeddings: int
    timings_ms: dict = field(default_factory=dict)


class Runtime:
    """A bundle plus a gallery: `enroll` new classes from a few images, `classify` against all of them.

    bundle: an exported bundle directory (default: the reference bundle shipped with metaedge).
    store: a gallery database path (default, or ":memory:": an in-memory gallery that lives as long as the runtime).
    any_thread: calls may come from another thread than the one that made the runtime, one at a time (the caller
    serialises them); by default the gallery refuses that.
    """

    def __init__(self, bundle: str | os.PathLike | None = None, store: str | os.PathLike | None = None,
                 *, readonly: bool = False, any_thread: bool = False) -> None:  # fmt: skip
        from metaedge.gallery import Gallery

        self.bundle = bundle_io.load(REFERENCE_BUNDLE if bundle is None else bundle)
        self.use_target(self.bundle.manifest.get("target") or {})
        self.spec = self.bundle.preprocess
        self.metric = self.bundle.metric
        self.gallery = Gallery(
            store, self.bundle.model_id, self.bundle.embedding_dim, create=not readonly, readonly=readonly,
            any_thread=any_thread,
        )
        self._head_cache: tuple | None = None  # (gallery version, weight (C, D), bias (C,))
        self._proto_cache: tuple | None = None  # (gallery version, labels, prototypes (C, D), shots (C,))

    def use_target(self, target: dict) -> None:
        """(Re)open the sessions with a target profile's providers, threads and batch limit."""
        providers, threads = tuple(target.get("onnxruntime_providers", ())), int(target.get("threads", 0))
        self.session = create_session(self.bundle.onnx_path, providers, threads)
        self.enroll_session = self.session
        if self.bundle.has_enroll_graph:  # support images through their own graph (more test-time views)
            self.enroll_session = create_session(self.bundle.enroll_onnx_path, providers, threads)
        self.max_batch = int(target.get("max_batch", 64))
        self._providers, self._threads = providers, threads
        self._locator = None  # a locate bundle's dense graphs: (re)opened with these providers by the next locate

    # -- embedding ---------------------------------------------------------------------------------------------
    def embed(self, images: Sequence[ImageInput]) -> np.ndarray:
        """images -> float32 embeddings (N, D)."""
        return run_batched(self.session, preprocess(list(images), self.spec), self.max_batch)

    # -- gallery ---------------------------------------------------------------------------------------------
    def enroll(self, label: str, images: Sequence[ImageInput], *, replace: bool = False) -> EnrollResult:
        """Add (or with `replace`, redefine) class `label` from a few images, in one gallery transaction."""
        images = list(images)
        if not images:
            raise DataError(f"class {label!r}: no images given")
        t0 = time.perf_counter()
        x = preprocess(images, self.spec)
        t1 = time.perf_counter()
        z = run_batched(self.enroll_session, x, self.max_batch)
        t2 = time.perf_counter()
        sources = [str(i) if isinstance(i, (str, os.PathLike)) else f"<{type(i).__name__}>" for i in images]
        record = self.gallery.enroll(label, z, sources=sources, replace=replace)
        t3 = time.perf_counter()
        timings = {"decode_preprocess": 1e3 * (t1 - t0), "backbone": 1e3 * (t2 - t1), "gallery_commit": 1e3 * (t3 - t2),
                   "total": 1e3 * (t3 - t0)}  # fmt: skip
        return EnrollResult(record.label, len(images), record.count, timings)

    def labels(self) -> list[str]:
        return self.gallery.labels()

    def remove(self, label: str) -> None:
        self.gallery.remove(label)

    # -- classification --------------------------------------------------------------------------------------
    def default_threshold(self) -> float | None:
        """The bundle's single threshold (that of its largest calibrated number of shots), which older metaedge
        applied to every class; classify applies `threshold_for` the number of shots of each class instead."""
        open_set = self.bundle.manifest.get("open_set") or {}
        return open_set.get("threshold")

    def threshold_for(self, shots: int) -> float | None:
        """The calibrated threshold for a class enrolled from `shots` images (None: the bundle has none)."""
        return threshold_for(self.bundle.manifest.get("open_set"), shots)

    def classify(self, images: Sequence[ImageInput], *, top_k: int = 1, adapt: bool = False,
                 threshold: float | None | object = _MANIFEST_THRESHOLD) -> list[Prediction]:  # fmt: skip
        """One Prediction per image. threshold: a score below it means "unknown"; None turns rejection off;
        by default the bundle's calibrated threshold for the number of images the best class was enrolled
        from (a one-shot class's prototype is noisier, so its genuine queries score lower). adapt: rank
        classes with a head adapted on every enrolled embedding (the bundle's adaptation settings) instead
        of the prototypes alone.
        """
        require_task(self.bundle, "classify")
        labels, protos, shots = self._prototypes()
        if not labels:
            raise DataError("the gallery is empty: enroll at least one class first")
        if top_k < 1:
            raise DataError(f"top_k must be at least 1, got {top_k}")
        queries = self.embed(images)
        similarity = self._similarity(queries, protos)
        ranking = self._adapted_logits(queries, labels) if adapt else similarity
        k = min(top_k, len(labels))
        out = []
        for row_rank, row_sim in zip(ranking, similarity):
            # argmax is argsort's first entry (the lowest index among ties) without sorting every class.
            order = [int(np.argmax(row_rank))] if k == 1 else np.argsort(-row_rank, kind="stable")[:k]
            best = int(order[0])
            score = float(row_sim[best])
            # The best class's own threshold only: looking one up for every class cost more than the
            # network's forward pass in a gallery of a few dozen classes.
            limit = self.threshold_for(int(shots[best])) if threshold is _MANIFEST_THRESHOLD else threshold
            known = limit is None or score >= limit
            out.append(Prediction(labels[best] if known else None, score,
                                  [(labels[int(j)], float(row_rank[j])) for j in order]))  # fmt: skip
        return out

    # -- localisation ----------------------------------------------------------------------------------------
    def locate(self, scene: ImageInput, labels: Sequence[str] | None = None,
               threshold: float | None | object = _MANIFEST_THRESHOLD) -> list[Localization]:  # fmt: skip
        """Find enrolled classes in one scene (any size; metaedge/locate.py) -> one Localization per class (or per
        one of `labels`), best score first. threshold: a score at or over it means present; None: all present;
        by default the bundle's, calibrated on scenes with and without the class. Needs a locate bundle."""
        locator = self.locator
        names, protos, _ = self._prototypes()
        if not names:
            raise DataError("the gallery is empty: enroll at least one class first")
        if labels is not None:
            missing = [label for label in labels if label not in names]
            if missing or not labels:
                raise DataError(f"not enrolled: {', '.join(map(repr, missing))}" if missing else "no labels given")
            rows = [names.index(label) for label in dict.fromkeys(labels)]
            names, protos = [names[r] for r in rows], protos[rows]
        floor = None  # the bundle's decode floor is calibrated with its threshold: any other decodes every class
        if threshold is _MANIFEST_THRESHOLD:
            threshold = self.bundle.manifest["locate"].get("threshold")
            floor = locator.decode_floor if threshold is not None else None
        return locate_scene(locator, scene, names, protos, threshold, floor=floor)

    @property
    def locator(self) -> Locator:
        """A locate bundle's dense graphs (metaedge/locate.py), opened on first use with this runtime's providers
        and threads: for scripts that score scenes stage by stage. Needs a locate bundle."""
        require_task(self.bundle, "locate")
        if self._locator is None:
            settings = self.bundle.manifest["locate"]
            self._locator = Locator(self.bundle.file(settings["dense"]["file"]),
                                    self.bundle.file(settings["decoder"]["file"]), settings, self._providers,
                                    self._threads)  # fmt: skip
        return self._locator

    def _prototypes(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(labels, prototypes (C, D), shots (C,): how many embeddings each class holds)."""
        # Cached per gallery version: a classify call costs one PRAGMA, not a scan of every class,
        # yet still sees classes another process enrolled a moment ago.
        version = self.gallery.version()
        if self._proto_cache is None or self._proto_cache[0] != version:
            labels, protos = self.gallery.prototypes()
            # A second read, not one snapshot: a class removed in between has no count here, and the version
            # read above is older than that removal, so the next call reads everything again.
            counts = {r.label: r.count for r in self.gallery.records()}
            shots = np.asarray([counts.get(label, 1) for label in labels], dtype=np.int64)
            self._proto_cache = (version, labels, protos, shots)
        return self._proto_cache[1], self._proto_cache[2], self._proto_cache[3]

    def _similarity(self, queries: np.ndarray, protos: np.ndarray) -> np.ndarray:
        # Scale-free scores, so one threshold holds whatever temperature the model learned.
        return kernels.logits(queries, protos, metric=self.metric, scale=1.0)

    def _adapted_logits(self, queries: np.ndarray, labels: list[str]) -> np.ndarray:
        settings = self.bundle.manifest["adaptation"]
        version = self.gallery.version()
        if self._head_cache is None or self._head_cache[0] != version:
            embeddings, targets = [], []
            for c, label in enumerate(labels):
                e = self.gallery.embeddings(label)
                embeddings.append(e)
                targets.append(np.full(len(e), c, dtype=np.int64))
            support = self._head_input(np.concatenate(embeddings))
            lr_weight, lr_bias = self._step_sizes(len(labels))
            weight, bias = kernels.adapt_head(
                support, np.concatenate(targets), len(labels), steps=settings["steps"], lr=settings["lr"],
                weight_decay=settings["weight_decay"], init=settings["head_init"], lr_weight=lr_weight,
                lr_bias=lr_bias,
            )  # fmt: skip
            self._head_cache = (version, weight, bias)
        _, weight, bias = self._head_cache
        return self._head_input(queries) @ weight.T + bias

    def _step_sizes(self, num_classes: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Meta-SGD's learned per-parameter step sizes, broadcast to a head of `num_classes` rows; else None."""
        name = self.bundle.manifest["adaptation"].get("step_sizes_file")
        if name is None:
            return None, None
        from safetensors.numpy import load_file

        sizes = load_file(str(self.bundle.file(name)))
        lr_w, lr_b = sizes["lr_weight"], sizes["lr_bias"]
        return np.broadcast_to(lr_w, (num_classes, len(lr_w))).copy(), np.full(num_classes, lr_b[0], np.float32)

    def _head_input(self, z: np.ndarray) -> np.ndarray:
        # The head sees what the metric sees: unit vectors for cosine models (and the learned inner loops).
        if self.bundle.manifest["adaptation"].get("normalize_features", self.metric == "cosine"):
            return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return z

    def close(self) -> None:
        self.gallery.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
