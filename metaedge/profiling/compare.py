"""Compare two profiles figure by figure: the ratio B / A of p50 and mean, for figures both measured."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from metaedge.profiling.config import ProfileError
from metaedge.profiling.schema import COMPARISON_KIND, SCHEMA_VERSION, validate

KEY = ("stage", "backend", "batch", "ways", "shots")
# Conditions that, when they differ, explain a ratio before the code does.
_CONDITIONS = {
    "model id": ("model", "model_id"),
    "CPU": ("cpu", "model"),
    "int8 instructions": ("cpu", "int8_instructions"),
    "usable cores": ("cpu", "usable_cores"),
    "target": ("target", "name"),
    "metaedge": ("versions", "metaedge"),
    "onnxruntime": ("versions", "onnxruntime"),
    "torch": ("versions", "torch"),
    "tensorrt": ("versions", "tensorrt"),
    "ONNX Runtime threads": ("threads", "onnxruntime_intra_op"),
    "torch threads": ("threads", "torch_intra_op"),
}


def load_profile(path: str | os.PathLike) -> dict:
    """Read a profile JSON file and check it against the schema; ProfileError says what is wrong."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise ProfileError(f"{path}: not valid JSON ({e})") from None
    validate(doc, "profile", where=str(path))
    return doc


def key(figure: dict) -> tuple:
    return tuple(figure[k] for k in KEY)


def _ratio(b: float, a: float) -> float | None:
    return b / a if a > 0 else None


def _ref(doc: dict, path: str) -> dict:
    return {"path": path, "created": doc["created"], "model_id": doc["conditions"]["model"]["model_id"],
            "cpu": str(doc["conditions"]["cpu"]["model"])}  # fmt: skip


def compare_profiles(a: dict, b: dict, a_path: str = "A", b_path: str = "B") -> dict:
    """Match the figures of profiles `a` and `b` by (stage, backend, batch, ways, shots).

    Returns a comparison (schema $defs/comparison): one row per figure in both, in a's order, with
    p50_ratio = b.p50 / a.p50 and mean_ratio = b.mean / a.mean (None where a's is 0); the figures only one
    profile has; and the conditions (model, CPU, versions, threads) that differ.
    """
    in_b = {key(f): f for f in b["figures"]}
    in_a = {key(f): f for f in a["figures"]}
    rows = []
    for fa in a["figures"]:
        fb = in_b.get(key(fa))
        if fb is None:
            continue
        rows.append({**{k: fa[k] for k in KEY}, "a_p50_ms": fa["p50_ms"], "b_p50_ms": fb["p50_ms"],
                     "p50_ratio": _ratio(fb["p50_ms"], fa["p50_ms"]), "a_mean_ms": fa["mean_ms"],
                     "b_mean_ms": fb["mean_ms"], "mean_ratio": _ratio(fb["mean_ms"], fa["mean_ms"])})  # fmt: skip
    differ = []
    for what, (section, field) in _CONDITIONS.items():
        va = (a["conditions"].get(section) or {}).get(field)
        vb = (b["conditions"].get(section) or {}).get(field)
        if va != vb:
            differ.append({"what": what, "a": va, "b": vb})
    doc = {
        "kind": COMPARISON_KIND, "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "a": _ref(a, a_path), "b": _ref(b, b_path), "rows": rows,
        "only_in_a": [{k: f[k] for k in KEY} for f in a["figures"] if key(f) not in in_b],
        "only_in_b": [{k: f[k] for k in KEY} for f in b["figures"] if key(f) not in in_a],
        "conditions_differ": differ,
    }  # fmt: skip
    validate(doc, "comparison", where="comparison")
    return doc


def compare_files(a: str | os.PathLike, b: str | os.PathLike) -> dict:
    """compare_profiles of two profile files, each validated first."""
    return compare_profiles(load_profile(a), load_profile(b), str(a), str(b))
