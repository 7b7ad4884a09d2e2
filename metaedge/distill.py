"""Knowledge distillation: a trained teacher's embedding geometry on each training episode, as a loss for a student.

    teacher = load_teacher("metaedge/reference/ensemble")        # a bundle (ONNX Runtime) or a run folder
    distiller = Distiller(teacher, loss="kl", weight=1.0, temperature=4.0)
    targets = distiller.targets(images_at_teacher_size)           # (N, Dt), no gradient
    loss = cross_entropy + distiller.loss(zs, zq, student_logits, targets, support_labels, way)

The teacher sees exactly the images the student trains on (the same classes, the same random warps), decoded
at its own preprocessing (size, inversion, normalisation), which may differ from the student's: the shipped
ensemble eats 56x56 images, a Conv4 student 28x28. It runs in eval mode (running batch-norm statistics) and
without gradients, so its targets for an image do not depend on the episode it appears in.

Several teachers teach as one (`metaedge train --teacher A --teacher B`): their embeddings side by side, each
scaled to the first one's spread on the training images and all by 1/sqrt(parts), so the whole has the first
teacher's spread (its kl logits as sharp as the first's alone) and every part weighs the same, as
metaedge/ensemble.py weighs members. Each part reads the images at its own preprocessing.

    teachers = combine_teachers([load_teacher(a), load_teacher(b)], training_images_by_spec)

Losses (the student's embeddings of the episode, its episode logits, the teacher's embeddings):
  kl: Hinton et al. (2015): T^2 * KL(softmax(teacher logits / T) || softmax(student logits / T)) over the
      queries, the teacher's logits made by the teacher's own prototypes and metric on the same episode.
  relational: Park et al. (2019), RKD-distance: the Huber loss between the two networks' pairwise distances of
      every image of the episode, each divided by its mean, so only the shape of the geometry is matched.
  kl+relational: their sum.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from metaedge import bundle as bundle_io
from metaedge import checkpoint as ckpt
from metaedge.data.preprocess import PreprocessSpec
from metaedge.errors import MetaedgeError
from metaedge.methods.protonet import class_means

LOSSES = ("kl", "relational", "kl+relational")


class TeacherError(MetaedgeError):
    """A teacher that cannot teach this run: unreadable, of other images, trained on its held-out groups, or
    not the teacher the run was started with."""


@dataclass
class Teacher:
    """A frozen network that embeds images as it was trained to.

    source: the path given; kind: "run" (a checkpoint, run in PyTorch) or "bundle" (its backbone.onnx, run in
    ONNX Runtime as the device runs it); file and sha256: the weights file and its content hash, which identify
    the teacher in the student's run (a resumed run refuses another); spec: the teacher's preprocessing;
    metric, scale: how the teacher compares an embedding to a prototype; seen_groups: the groups it trained and
    validated on (None where it does not record them).
    """

    source: str
    kind: str
    file: str
    sha256: str
    spec: PreprocessSpec
    metric: str
    scale: float
    seen_groups: list[str] | None
    _embed: object  # images float32 (B, C, S, S) on the training device -> (B, D) on the same device

    def identity(self) -> dict:
        """What the student's checkpoints record of the teacher."""
        return {"source": self.source, "kind": self.kind, "file": self.file, "sha256": self.sha256,
                "preprocess": self.spec.to_dict(), "metric": self.metric, "scale": self.scale}  # fmt: skip

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images float32 (B, C, S, S), normalised by `spec` -> embeddings float32 (B, D), without gradient."""
        return self._embed(images).float()

    def logits(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, way: int
    ) -> torch.Tensor:
        """Teacher embeddings support (S, D), labels (S,), query (Q, D) -> its episode logits (Q, way), by its
        metric: -||q - p||^2, or scale * cos(q, p)."""
        return _metric_logits(self.metric, self.scale, support, support_labels, query, way)


def _metric_logits(metric, scale, support, support_labels, query, way) -> torch.Tensor:
    protos = class_means(support, support_labels, way)
    if metric == "cosine":
        return scale * F.normalize(query, dim=1) @ F.normalize(protos, dim=1).T
    return -scale * torch.cdist(query, protos).pow(2)


@dataclass
class Teachers:
    """One teacher, or several whose embeddings are put side by side (each multiplied by its weight).

    parts: the teachers, in the order given; weights: each part's multiplier (1.0 for a lone teacher, whose
    targets are its own embeddings unchanged); specs: the distinct preprocessings the parts read, in order.
    """

    parts: list[Teacher]
    weights: list[float]

    @property
    def specs(self) -> list[PreprocessSpec]:
        return list(dict.fromkeys(t.spec for t in self.parts))

    @property
    def source(self) -> str:
        return " + ".join(t.source for t in self.parts)

    @property
    def sha256(self) -> str:
        """A lone teacher's weights hash; for several, the hash of their hashes in order (a resumed run's
        teachers must be the same files in the same order)."""
        return teachers_sha256(self.parts)

    def identity(self) -> dict:
        """What the student's checkpoints record: a lone teacher's identity as it always was, or the parts' and
        their weights (a resumed run reuses the weights rather than measuring them again)."""
        if len(self.parts) == 1:
            return self.parts[0].identity()
        first = self.parts[0]
        return {"source": self.source, "kind": "teachers", "sha256": self.sha256, "metric": first.metric,
                "scale": first.scale, "weights": list(self.weights),
                "parts": [t.identity() for t in self.parts]}  # fmt: skip

    @torch.no_grad()
    def embed(self, images: Mapping[PreprocessSpec, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """The same N images at each part's preprocessing, {spec: (N, C, S, S)} (a lone tensor where every part
        reads one preprocessing) -> (N, sum of the parts' D), without gradient."""
        if isinstance(images, torch.Tensor):
            if len(self.specs) > 1:
                raise TeacherError(f"the teachers read {len(self.specs)} preprocessings: give images for each")
            images = {self.specs[0]: images}
        return torch.cat([w * t.embed(images[t.spec]) for w, t in zip(self.weights, self.parts, strict=True)], dim=1)

    def logits(
        self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, way: int
    ) -> torch.Tensor:
        """As Teacher.logits, by the first part's metric and scale, on the embeddings side by side."""
        first = self.parts[0]
        return _metric_logits(first.metric, first.scale, support, support_labels, query, way)


def teachers_sha256(parts: Sequence[Teacher]) -> str:
    """What identifies the teachers of a run: a lone one's weights hash, or the hash of several's in order."""
    if len(parts) == 1:
        return parts[0].sha256
    return hashlib.sha256("+".join(t.sha256 for t in parts).encode()).hexdigest()


def combine_teachers(
    parts: Sequence[Teacher], training_images: Mapping[PreprocessSpec, torch.Tensor] | None = None,
    weights: Sequence[float] | None = None,
) -> Teachers:  # fmt: skip
    """Teachers as one: a lone teacher as it is; several with weights spread_1 / (spread_i * sqrt(k)), each
    spread the RMS distance of the part's embeddings of `training_images` ({spec: (N, C, S, S)}, the student's
    training images without rotations, never held-out ones) to their mean. `weights` given (a resumed run's,
    as recorded) are used as they are. Raises TeacherError where the parts' distances cannot add."""
    from metaedge.ensemble import embedding_spread

    parts = list(parts)
    if len(parts) == 1:
        return Teachers(parts, [1.0])
    for t in parts:
        if t.metric != "sqeuclidean":
            raise TeacherError(f"--teacher {t.source} compares by {t.metric}: only squared-euclidean teachers add "
                               "their distances side by side")  # fmt: skip
    if weights is not None:
        if len(weights) != len(parts):
            raise TeacherError(f"{len(weights)} recorded teacher weights for {len(parts)} teachers")
        return Teachers(parts, [float(w) for w in weights])
    if training_images is None:
        raise TeacherError("several teachers need the training images to weigh them")
    spreads = []
    for t in parts:
        z = torch.cat([t.embed(batch) for batch in training_images[t.spec].split(256)])
        spread = embedding_spread(z.cpu().double().numpy())
        if not spread > 0:
            raise TeacherError(f"--teacher {t.source} embeds every training image alike; cannot weigh it")
        spreads.append(spread)
    k = len(parts)
    return Teachers(parts, [spreads[0] / (s * math.sqrt(k)) for s in spreads])


def load_teacher(source: str | os.PathLike, device: str = "cpu", threads: int | None = None) -> Teacher:
    """A run folder (its best checkpoint) or checkpoint file, or a bundle folder; raises TeacherError.

    threads: ONNX Runtime's intra-op threads for a bundle (default: torch's, so the teacher shares the cores
    the student trains on rather than taking one per core on top of them).
    """
    path = Path(source)
    try:
        if (path / bundle_io.MANIFEST).is_file():
            return _bundle_teacher(path, threads if threads is not None else torch.get_num_threads())
        return _run_teacher(path, device)
    except TeacherError:
        raise
    except MetaedgeError as e:  # unreadable checkpoint or bundle: say it is the teacher that is wrong
        raise TeacherError(f"--teacher: {e}") from None


def _run_teacher(path: Path, device: str) -> Teacher:
    loaded = ckpt.load(path, map_location=device)  # eval mode, weights checked against their architecture
    method = loaded.method.to(device)
    if not method.embeds_independently:
        name = loaded.meta["algorithm"]["name"]
        raise TeacherError(f"--teacher {path}: a {name} network adapts itself per episode and has no fixed "
                           "embedding to teach; use a ProtoNet, ANIL or Meta-SGD run")  # fmt: skip
    metric = getattr(method, "metric", "sqeuclidean")
    split = loaded.meta.get("split") or {}
    seen = [*split.get("train", []), *split.get("val", [])] if split else None
    return Teacher(
        source=str(path), kind="run", file=str(loaded.path), sha256=bundle_io.sha256_file(loaded.path),
        spec=loaded.preprocess, metric=metric, scale=method.scale if metric == "cosine" else 1.0, seen_groups=seen,
        _embed=method.embed,
    )  # fmt: skip


def _bundle_teacher(path: Path, threads: int) -> Teacher:
    from metaedge.ort import create_session

    bundle = bundle_io.load(path)  # verifies every file against its sha256
    session = create_session(bundle.onnx_path, threads=threads)
    name = session.get_inputs()[0].name

    def embed(images: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {name: np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(out).to(images.device)

    split = (bundle.manifest.get("training") or {}).get("split")
    seen = [*split.get("train", []), *split.get("val", [])] if split else None
    sha256 = bundle.manifest["files"][bundle.manifest["backbone"]["file"]]["sha256"]  # checked by bundle.load
    return Teacher(
        source=str(path), kind="bundle", file=str(bundle.onnx_path), sha256=sha256,
        spec=bundle.preprocess, metric=bundle.metric, scale=bundle.scale, seen_groups=seen, _embed=embed,
    )  # fmt: skip


def check_teacher(teacher: Teacher, student_spec: PreprocessSpec, held_out: list[str]) -> None:
    """Refuse a teacher whose images are not the student's kind, or that learnt from the student's held-out
    groups (distillation would carry them into the student); raises TeacherError, one line."""
    if teacher.spec.channels != student_spec.channels:
        raise TeacherError(f"--teacher {teacher.source} takes {teacher.spec.channels}-channel images, the "
                           f"student {student_spec.channels}-channel: it must see what the student sees")  # fmt: skip
    if teacher.seen_groups is None:
        raise TeacherError(f"--teacher {teacher.source} records no training groups: nothing shows it never saw the "
                           f"student's held-out groups {sorted(held_out)}")  # fmt: skip
    leaked = sorted(set(teacher.seen_groups) & set(held_out))
    if leaked:
        raise TeacherError(f"--teacher {teacher.source} trained on {leaked}, which this run holds out for testing; "
                           "pick a --split-seed that holds out what the teacher held out")  # fmt: skip


def check_same_teacher(recorded: dict, parts: Sequence[Teacher]) -> None:
    """A resumed run goes on with the teacher(s) it started with, byte for byte and in order; raises
    TeacherError."""
    sha256, source = teachers_sha256(parts), " + ".join(t.source for t in parts)
    if recorded["sha256"] != sha256:
        raise TeacherError(f"this run was distilled from {recorded['source']} (sha256 {recorded['sha256'][:12]}), "
                           f"not {source} (sha256 {sha256[:12]}): resume with its own teacher, "
                           "unchanged, or start a new run")  # fmt: skip


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(Q, way) logits each -> scalar T^2 * KL(teacher || student) of their softened predictions, mean over queries.

    The T^2 keeps the gradient's size independent of T (Hinton et al., 2015).
    """
    t = F.log_softmax(teacher_logits / temperature, dim=1)
    s = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def relational_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Embeddings of the same N images, student (N, Ds) and teacher (N, Dt) -> scalar: the Huber loss between
    their pairwise euclidean distances, each set divided by its mean (the two spaces' scales are unrelated)."""
    ds, dt = torch.pdist(student), torch.pdist(teacher)
    return F.smooth_l1_loss(ds / ds.mean().clamp_min(1e-12), dt / dt.mean().clamp_min(1e-12))


@dataclass
class Distiller:
    """A teacher (or Teachers) and the loss that carries its geometry to the student; `weight` scales it against
    the episode's cross-entropy, `temperature` softens both predictions for `kl`."""

    teacher: Teachers | Teacher
    loss_name: str = "kl"
    weight: float = 1.0
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if isinstance(self.teacher, Teacher):
            self.teacher = Teachers([self.teacher], [1.0])
        if self.loss_name not in LOSSES:
            raise TeacherError(f"unknown distillation loss {self.loss_name!r}; choose one of {', '.join(LOSSES)}")
        if not (self.weight >= 0 and self.temperature > 0):
            raise TeacherError(f"--distill-weight must be >= 0 and --distill-temperature > 0, not {self.weight} "
                               f"and {self.temperature}")  # fmt: skip

    def targets(self, images: Mapping[PreprocessSpec, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """The episode's images at each teacher's preprocessing, {spec: (N, C, S, S)} (or one tensor where the
        teachers read one), support first -> (N, Dt)."""
        return self.teacher.embed(images)

    def loss(
        self, zs: torch.Tensor, zq: torch.Tensor, student_logits: torch.Tensor, targets: torch.Tensor,
        support_labels: torch.Tensor, way: int,
    ) -> torch.Tensor:  # fmt: skip
        """Student embeddings zs (S, Ds), zq (Q, Ds), its logits (Q, way), the teacher's targets (S + Q, Dt) of
        the same images in the same order, support_labels (S,) -> the weighted distillation loss (scalar)."""
        total = student_logits.new_zeros(())
        if "kl" in self.loss_name.split("+"):
            ns = len(zs)
            teacher_logits = self.teacher.logits(targets[:ns], support_labels, targets[ns:], way)
            total = total + kl_loss(student_logits, teacher_logits, self.temperature)
        if "relational" in self.loss_name.split("+"):
            total = total + relational_loss(torch.cat([zs, zq]), targets)
        return self.weight * total
