"""What one profiling run measures: the options of `metaedge profile`, checked before any work starts."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from metaedge.errors import MetaedgeError

BACKEND_KINDS = ("torch", "onnxruntime", "tensorrt")
SAMPLES = Path(__file__).resolve().parents[1] / "reference" / "samples" / "Korean"


class ProfileError(MetaedgeError):
    """Profiling options that cannot be run, or a profile file that is unreadable or does not validate."""


def parse_counts(text: str, name: str) -> tuple[int, ...]:
    """ "1,8,32" -> (1, 8, 32): positive integers, duplicates dropped, order kept."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise ProfileError(f"--{name}: {part!r} is not an integer (expected e.g. 1,8,32)") from None
        if value < 1:
            raise ProfileError(f"--{name}: {value} must be at least 1")
        if value not in values:
            values.append(value)
    return tuple(values)


@dataclass(frozen=True)
class ProfileConfig:
    """One run's settings.

    bundle: bundle directory (None: the reference bundle shipped with metaedge).
    checkpoint: run directory or checkpoint file; adds the PyTorch eager backend.
    target: a shipped target profile name to profile with instead of the bundle's own (its providers,
        threads and max batch).
    backends: which backend kinds to try ("torch", "onnxruntime", "tensorrt"); the others are listed as skipped.
    batches: batch sizes for the per-image stages (decode, preprocess, backbone, classification).
    ways, shots: episode shapes for the per-class stages (prototypes, head adaptation, gallery commit, end to end).
    warmup: untimed calls after the cold one. iterations XOR duration_s: timed calls per figure, or seconds
        of timed calls per figure.
    top_k: classes ranked per query in classification (capped by the number of ways).
    samples: a folder of class folders of images (default: the Korean alphabet shipped with metaedge).
    """

    bundle: Path | None = None
    checkpoint: Path | None = None
    target: str | None = None
    backends: tuple[str, ...] = BACKEND_KINDS
    batches: tuple[int, ...] = (1, 8)
    ways: tuple[int, ...] = (5, 20)
    shots: tuple[int, ...] = (1, 5)
    warmup: int = 5
    iterations: int | None = 50
    duration_s: float | None = None
    top_k: int = 5
    samples: Path = SAMPLES

    def __post_init__(self) -> None:
        unknown = [b for b in self.backends if b not in BACKEND_KINDS]
        if unknown or not self.backends:
            raise ProfileError(f"--backend: unknown {unknown}; choose from {', '.join(BACKEND_KINDS)}")
        for name in ("batches", "ways", "shots"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise ProfileError(f"{name} must be one or more integers >= 1, got {values}")
        if self.warmup < 0:
            raise ProfileError(f"--warmup must be >= 0, got {self.warmup}")
        if (self.iterations is None) == (self.duration_s is None):
            raise ProfileError("give exactly one of --iterations and --duration")
        if self.iterations is not None and self.iterations < 1:
            raise ProfileError(f"--iterations must be at least 1, got {self.iterations}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ProfileError(f"--duration must be a positive number of seconds, got {self.duration_s}")
        if self.top_k < 1:
            raise ProfileError(f"top_k must be at least 1, got {self.top_k}")

    def command_line(self, *extra: str) -> str:
        """The `metaedge profile` invocation that makes this configuration, then `extra` arguments."""
        args = ["metaedge", "profile"]
        for option, value in (("--bundle", self.bundle), ("--checkpoint", self.checkpoint), ("--target", self.target)):
            if value is not None:
                args += [option, str(value)]
        if self.backends != BACKEND_KINDS:
            for b in self.backends:
                args += ["--backend", b]
        for option, values in (("--batch", self.batches), ("--shots", self.shots), ("--ways", self.ways)):
            args += [option, ",".join(map(str, values))]
        args += ["--warmup", str(self.warmup)]
        args += (
            ["--iterations", str(self.iterations)]
            if self.iterations is not None
            else ["--duration", str(self.duration_s)]
        )
        return shlex.join([*args, *extra])

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
