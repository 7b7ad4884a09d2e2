"""Per-board export target profiles: JSON files shipped in the wheel (from the repository's `export/` folder)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

from metaedge.errors import MetaedgeError

PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PRECISIONS = ("fp32", "fp16", "int8")
_TRT_KEYS = {"workspace_mib", "fp16", "int8", "dla_core", "min_batch", "opt_batch", "max_batch"}


class TargetError(MetaedgeError):
    """An unknown target, or a profile file that does not validate."""


@dataclass(frozen=True)
class TargetProfile:
    """What one board needs from an export.

    onnxruntime_providers: execution providers to try, in order of preference.
    threads: intra-op threads for ONNX Runtime (0: one per core).
    tensorrt: builder settings (workspace_mib, fp16, int8, dla_core, min/opt/max_batch), or None without a GPU.
    cuda_architectures: compute capabilities the native kernels must be compiled for ("87" for Orin).
    """

    name: str
    description: str
    onnxruntime_providers: tuple[str, ...]
    precision: str
    max_batch: int
    threads: int
    tensorrt: dict | None
    cuda_architectures: tuple[str, ...]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict, where: str = "profile") -> TargetProfile:
        known = {f.name for f in fields(cls)}
        if set(d) != known:
            unknown, missing = sorted(set(d) - known), sorted(known - set(d))
            raise TargetError(f"{where}: unknown keys {unknown}, missing keys {missing}; valid keys: {sorted(known)}")
        bad = [p for p in d["onnxruntime_providers"] if p not in PROVIDERS]
        if bad or not d["onnxruntime_providers"]:
            raise TargetError(f"{where}: unknown execution provider(s) {bad}; valid: {list(PROVIDERS)}")
        if d["precision"] not in PRECISIONS:
            raise TargetError(f"{where}: precision {d['precision']!r} is not one of {list(PRECISIONS)}")
        if not (isinstance(d["max_batch"], int) and d["max_batch"] >= 1) or not (
            isinstance(d["threads"], int) and d["threads"] >= 0
        ):
            raise TargetError(f"{where}: max_batch must be an integer >= 1 and threads an integer >= 0")
        trt = d["tensorrt"]
        if trt is not None:
            if set(trt) != _TRT_KEYS:
                raise TargetError(f"{where}: tensorrt settings need exactly the keys {sorted(_TRT_KEYS)}")
            if not 1 <= trt["min_batch"] <= trt["opt_batch"] <= trt["max_batch"]:
                raise TargetError(f"{where}: tensorrt batches need 1 <= min_batch <= opt_batch <= max_batch")
        return cls(
            **{**d, "onnxruntime_providers": tuple(d["onnxruntime_providers"]),
               "cuda_architectures": tuple(str(a) for a in d["cuda_architectures"])}
        )  # fmt: skip


def _profile_dir() -> Path:
    """Installed wheels carry the profiles in `metaedge/targets`; a source checkout has them in `export/`."""
    installed = Path(str(resources.files("metaedge"))) / "targets"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[1] / "export"


def list_targets() -> dict[str, TargetProfile]:
    """Every shipped profile by name, each validated."""
    profiles = {}
    for path in sorted(_profile_dir().glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise TargetError(f"{path}: not valid JSON ({e})") from None
        profile = TargetProfile.from_dict(data, where=str(path))
        if profile.name != path.stem:
            raise TargetError(f"{path}: profile name {profile.name!r} does not match its file name")
        profiles[profile.name] = profile
    return profiles


def targets_table(profiles: dict[str, TargetProfile]):
    """The profiles as a rich Table for `metaedge export --list-targets`: the name, then the board's description
    over its settings (precision, max batch, CUDA architectures, execution providers).

    The name is what a user copies into --target, so its column never wraps, shrinks or elides (six columns
    side by side cut it to `jetson-ori…` on an 80-column terminal or a pipe); everything else shares one
    column that wraps at spaces, folding rather than eliding a word too long for it.
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    longest = max((len(name) for name in profiles), default=0)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold", leading=1)
    table.add_column("target", no_wrap=True, min_width=longest)
    table.add_column("board and settings", overflow="fold", ratio=1)
    for name, p in profiles.items():
        providers = ", ".join(x.removesuffix("ExecutionProvider") for x in p.onnxruntime_providers)
        arch = ", ".join(p.cuda_architectures) or "none"
        settings = f"{p.precision}, max batch {p.max_batch}, CUDA arch {arch}, providers {providers}"
        table.add_row(name, Text.assemble(p.description, "\n", (settings, "dim")))
    return table


def get_target(name: str) -> TargetProfile:
    profiles = list_targets()
    if name not in profiles:
        raise TargetError(f"unknown target {name!r}; valid targets: {', '.join(profiles)}")
    return profiles[name]
