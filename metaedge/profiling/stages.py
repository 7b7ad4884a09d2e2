"""The stages a profile times, each as a list of jobs: one job per figure (stage x backend x shape)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaedge import kernels
from metaedge.bundle import Bundle
from metaedge.gallery import Gallery
from metaedge.images import open_image, preprocess
from metaedge.ort import available_providers
from metaedge.profiling.backends import ORT_NAMES, Backend
from metaedge.profiling.config import ProfileConfig
from metaedge.profiling.timer import Start
from metaedge.profiling.workload import ROTATION, Workload

# Stage names in pipeline order, with what one call does. The last two run the public Runtime methods.
STAGES = {
    "decode": "read and decode `batch` image files (Pillow), as the runtime does first",
    "preprocess": "`batch` decoded images -> float32 (batch, C, H, W): colour, resize, scale, normalise",
    "backbone": "float32 (batch, C, H, W) on the host -> embeddings (batch, D) on the host, per backend; "
                "cold = session creation (checkpoint load, engine deserialisation) + first inference",
    "prototypes": "class prototypes from ways*shots support embeddings (kernels.prototypes)",
    "head_adaptation": "the bundle's head adaptation on ways*shots support embeddings (kernels.adapt_head)",
    "classification": "logits of `batch` query embeddings against `ways` prototypes (kernels.logits) + top-k",
    "gallery_commit": "one enrollment transaction (shots embeddings + prototype) into a temporary SQLite gallery "
                      "on disk; cold = creating the gallery file + first commit",
    "enroll_one_class": "Runtime.enroll of one new class from `shots` image files (decode to commit); "
                        "cold = Runtime construction + first enroll",
    "classify_one_image": "Runtime.classify of one image file against `ways` enrolled classes of `shots` images; "
                          "cold = the first call after enrollment (it loads the prototypes)",
}  # fmt: skip


@dataclass
class Job:
    """One figure to measure. setup() runs untimed and returns the Start that measure() times.

    items: the work of one call, for throughput (images, or support embeddings for per-class stages).
    backend: its name, or a function giving it after the run (the kernel that served, the provider used).
    sync: run around each timed call (torch.cuda.synchronize for GPU backends), or None.
    fragile: a failure marks the stage as failed in the profile instead of ending the run (for kernels
        still being written).
    """

    stage: str
    backend: str | Callable[[], str]
    setup: Callable[[], Start]
    items: int
    batch: int | None = None
    ways: int | None = None
    shots: int | None = None
    sync: Callable[[], None] | None = None
    fragile: bool = False

    def label(self) -> str:
        backend = self.backend if isinstance(self.backend, str) else "..."
        shape = " ".join(f"{k}={v}" for k, v in (("batch", self.batch), ("ways", self.ways), ("shots", self.shots))
                         if v is not None)  # fmt: skip
        return f"{self.stage} {backend} {shape}"


def _ready(start: Start) -> Callable[[], Start]:
    return lambda: start


def _kernel_backend() -> str:
    return kernels.last_backend() if kernels.last_backend() != "none" else "kernels"


@dataclass
class Plan:
    """Everything the stages share. stack: closes galleries and runtimes when the profile ends."""

    bundle: Bundle
    target: dict
    config: ProfileConfig
    workload: Workload
    backends: list[Backend]
    workdir: Path
    stack: contextlib.ExitStack
    gpu_sync: Callable[[], None] | None

    def jobs(self) -> tuple[list[Job], dict[str, tuple[str, str | None]]]:
        """(jobs in pipeline order, {stage: (status, reason)}) where status is "ok" or "skipped"."""
        status: dict[str, tuple[str, str | None]] = {name: ("ok", None) for name in STAGES}
        jobs = self._decode() + self._preprocess() + self._backbone(status) + self._prototypes()
        jobs += self._head_adaptation(status) + self._classification() + self._gallery_commit()
        jobs += self._enroll() + self._classify()
        return jobs, status

    # -- per-image stages -------------------------------------------------------------------------------------
    def _decode(self) -> list[Job]:
        jobs = []
        for b in self.config.batches:
            paths = self.workload.batches(b, "paths")

            def call(i: int, paths=paths):
                return [open_image(p, j) for j, p in enumerate(paths[i % ROTATION])]

            jobs.append(Job("decode", "host", _ready(lambda call=call: call), items=b, batch=b))
        return jobs

    def _preprocess(self) -> list[Job]:
        jobs = []
        for b in self.config.batches:
            paths = self.workload.batches(b, "paths")

            def setup(paths=paths) -> Start:
                decoded = [[open_image(p) for p in batch] for batch in paths]
                # images.preprocess hands a decoded PIL image straight to the spec: this times the spec alone.
                return lambda: lambda i: preprocess(decoded[i % ROTATION], self.bundle.preprocess)

            jobs.append(Job("preprocess", "host", setup, items=b, batch=b))
        return jobs

    def _backbone(self, status: dict) -> list[Job]:
        jobs = []
        ok = [b for b in self.backends if b.status == "ok"]
        if not ok:
            status["backbone"] = ("skipped", "no backend can run here (see backends)")
        for backend in ok:
            for b in self.config.batches:
                xs = self.workload.batches(b, "pixels")

                def start(backend=backend, xs=xs):
                    run = backend.open()
                    return lambda i: run(xs[i % ROTATION])

                jobs.append(Job("backbone", backend.name, _ready(start), items=b, batch=b,
                                sync=self.gpu_sync if backend.gpu else None))  # fmt: skip
        return jobs

    def _classification(self) -> list[Job]:
        jobs = []
        metric = self.bundle.metric
        for ways in self.config.ways:
            support, labels = self.workload.support(ways, max(self.config.shots))
            # Means, as the gallery stores them; the cosine metric normalises inside the kernel.
            protos = kernels.prototypes(support, labels, ways, normalize=False)
            k = min(self.config.top_k, ways)
            for b in self.config.batches:
                queries = self.workload.batches(b, "embeddings")

                def call(i: int, queries=queries, protos=protos, k=k):
                    scores = kernels.logits(queries[i % ROTATION], protos, metric=metric, scale=1.0)
                    return np.argsort(-scores, axis=1, kind="stable")[:, :k]

                jobs.append(Job("classification", _kernel_backend, _ready(lambda call=call: call), items=b, batch=b,
                                ways=ways))  # fmt: skip
        return jobs

    # -- per-class stages -------------------------------------------------------------------------------------
    def _episodes(self) -> list[tuple[int, int]]:
        return [(w, s) for w in self.config.ways for s in self.config.shots]

    def _supports(self, ways: int, shots: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.workload.support(ways, shots, offset=r * ways) for r in range(ROTATION)]

    def _prototypes(self) -> list[Job]:
        jobs = []
        normalize = self.bundle.metric == "cosine"
        for ways, shots in self._episodes():
            sets = self._supports(ways, shots)

            def call(i: int, sets=sets, ways=ways):
                z, y = sets[i % ROTATION]
                return kernels.prototypes(z, y, ways, normalize=normalize)

            jobs.append(Job("prototypes", _kernel_backend, _ready(lambda call=call: call), items=ways * shots,
                            ways=ways, shots=shots))  # fmt: skip
        return jobs

    def _head_adaptation(self, status: dict) -> list[Job]:
        settings = self.bundle.manifest.get("adaptation")
        if not hasattr(kernels, "adapt_head"):
            status["head_adaptation"] = ("skipped", "metaedge.kernels has no adapt_head in this build")
            return []
        if not settings:
            status["head_adaptation"] = ("skipped", "the bundle's manifest has no adaptation settings")
            return []
        jobs = []
        for ways, shots in self._episodes():
            sets = [(self._head_input(z), y) for z, y in self._supports(ways, shots)]

            def call(i: int, sets=sets, ways=ways):
                z, y = sets[i % ROTATION]
                return kernels.adapt_head(
                    z, y, ways, steps=settings["steps"], lr=settings["lr"], weight_decay=settings["weight_decay"],
                    init=settings["head_init"],
                )  # fmt: skip

            jobs.append(Job("head_adaptation", _kernel_backend, _ready(lambda call=call: call), items=ways * shots,
                            ways=ways, shots=shots, fragile=True))  # fmt: skip
        return jobs

    def _head_input(self, z: np.ndarray) -> np.ndarray:
        # What Runtime._adapted_logits feeds the head: unit vectors for cosine models.
        if self.bundle.metric == "cosine":
            return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return z

    def _gallery_commit(self) -> list[Job]:
        jobs = []
        for shots in self.config.shots:
            n = len(self.workload.classes)
            rows = [[self.workload.index(r % n, k) for k in range(shots)] for r in range(ROTATION)]
            sets = [(np.ascontiguousarray(self.workload.embeddings[r]), [str(self.workload.paths[j]) for j in r])
                    for r in rows]  # fmt: skip

            def start(shots=shots, sets=sets):
                gallery = Gallery(self.workdir / f"commit-{shots}.db", self.bundle.model_id, self.bundle.embedding_dim)
                self.stack.callback(gallery.close)

                def call(i: int):
                    z, sources = sets[i % ROTATION]
                    return gallery.enroll(f"class-{i}", z, sources=sources)

                return call

            jobs.append(Job("gallery_commit", "sqlite", _ready(start), items=shots, shots=shots))
        return jobs

    # -- end to end: the public Runtime ---------------------------------------------------------------------------
    def _runtime(self, store: Path):
        from metaedge.runtime import Runtime

        rt = Runtime(self.bundle.path, store)
        self.stack.callback(rt.close)
        if self.config.target is not None:
            # Profiling for another target: its providers, threads and batch limit, as a device of that kind
            # would construct the runtime from a bundle exported for it.
            rt.use_target(self.target)
        return rt

    def _runtime_name(self) -> str:
        first = available_providers(tuple(self.target.get("onnxruntime_providers") or ()))[0]
        return "runtime/" + ORT_NAMES.get(first, first)

    def _enroll(self) -> list[Job]:
        jobs = []
        classes = self.workload.classes
        for shots in self.config.shots:

            def start(shots=shots):
                rt = self._runtime(self.workdir / f"enroll-{shots}.db")
                return lambda i: rt.enroll(f"class-{i}", classes[i % len(classes)][:shots])

            jobs.append(Job("enroll_one_class", self._runtime_name(), _ready(start), items=shots, shots=shots))
        return jobs

    def _classify(self) -> list[Job]:
        jobs = []
        k = self.config.top_k
        for ways, shots in self._episodes():

            def setup(ways=ways, shots=shots) -> Start:
                rt = self._runtime(self.workdir / f"classify-{ways}-{shots}.db")
                for c in range(ways):
                    rt.enroll(f"class-{c}", self.workload.classes[c][:shots])
                queries = self.workload.query_paths(ways, shots)
                return lambda: lambda i: rt.classify([queries[i % len(queries)]], top_k=k)

            jobs.append(Job("classify_one_image", self._runtime_name(), setup, items=1, batch=1, ways=ways,
                            shots=shots))  # fmt: skip
        return jobs
