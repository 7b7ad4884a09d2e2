"""The file format of profiles and comparisons: the JSON Schema (profile.schema.json), checking, writing."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from metaedge.profiling.config import ProfileError

SCHEMA_PATH = Path(__file__).resolve().parent / "profile.schema.json"
SCHEMA_VERSION = 1
KIND = "metaedge-profile"
COMPARISON_KIND = "metaedge-profile-comparison"
_NUMBER_LIST = re.compile(r"\[(?:\s*-?[0-9][0-9.eE+-]*\s*,)*\s*-?[0-9][0-9.eE+-]*\s*\]")


@cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate(doc: object, what: str = "profile", where: str = "profile") -> None:
    """Raise ProfileError naming the first problem if `doc` is not a valid `what` ("profile" or "comparison")."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    full = schema()
    # A comparison is a $defs entry of the same file, so both share one set of definitions.
    root = full if what == "profile" else {"$schema": full["$schema"], "$defs": full["$defs"],
                                            "$ref": f"#/$defs/{what}"}  # fmt: skip
    error = best_match(Draft202012Validator(root).iter_errors(doc))
    if error is not None:
        at = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ProfileError(f"{where}: not a valid metaedge {what} (schema_version {SCHEMA_VERSION}): "
                           f"{_short(error.message)} at {at}")  # fmt: skip


def _short(message: str, limit: int = 300) -> str:
    # jsonschema quotes the offending value whole; a figure with its samples would bury the message.
    return message if len(message) <= limit else message[:limit] + " ..."


def dumps(doc: dict) -> str:
    """Indented JSON with every list of numbers (the timed samples) on one line: readable, and diffable."""
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    return (
        _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(0)[1:-1].split(",")) + "]", text) + "\n"
    )
