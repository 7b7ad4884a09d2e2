"""Deployment bundles: a directory of files described by `manifest.json`, every file checked by sha256 on load."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jsonschema

from metaedge.data.preprocess import PreprocessSpec
from metaedge.errors import MetaedgeError

FORMAT = "metaedge-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED = ("format", "schema_version", "model_id", "backbone", "preprocess", "embedding_dim", "metric", "files")
# The types of what a runtime reads from a manifest, checked after the digest: a re-signed manifest with a field of
# the wrong type must be refused as a bundle problem, not crash the reader later with a TypeError.
_FILE = {"type": "object", "required": ["file"], "properties": {"file": {"type": "string", "minLength": 1}}}
MANIFEST_SCHEMA = {
    "type": "object",
    "required": list(REQUIRED),
    "properties": {
        "model_id": {"type": "string", "minLength": 1},
        "backbone": {**_FILE, "properties": {**_FILE["properties"], "enroll": {"anyOf": [_FILE, {"type": "null"}]}}},
        "preprocess": {"type": "object"},
        "embedding_dim": {"type": "integer", "minimum": 1},
        "metric": {"type": "object", "required": ["name", "scale"],
                   "properties": {"name": {"type": "string"}, "scale": {"type": "number"}}},
        "adaptation": {"type": "object"},
        "open_set": {"type": ["object", "null"]},
        "target": {"type": ["object", "null"]},
        "files": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["sha256", "bytes"],
            "properties": {"sha256": {"type": "string"}, "bytes": {"type": "integer", "minimum": 0}}}},
    },
}  # fmt: skip


class BundleError(MetaedgeError):
    """A bundle that is missing, incomplete, tampered with, or from a newer metaedge."""


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own `digest` field: catches edits to the manifest itself."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle. `manifest` is the parsed manifest.json; file paths are inside `path`."""

    path: Path
    manifest: dict

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def metric(self) -> str:
        return self.manifest["metric"]["name"]

    @property
    def scale(self) -> float:
        return float(self.manifest["metric"]["scale"])

    @property
    def onnx_path(self) -> Path:
        """The graph that embeds queries (and support images too, where the bundle has no enrollment graph)."""
        return self.path / self.manifest["backbone"]["file"]

    @property
    def has_enroll_graph(self) -> bool:
        return bool(self.manifest["backbone"].get("enroll"))

    @property
    def enroll_onnx_path(self) -> Path:
        """The graph that embeds support images at enrollment: through more test-time views, where exported so."""
        enroll = self.manifest["backbone"].get("enroll")
        return self.path / enroll["file"] if enroll else self.onnx_path

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise BundleError(f"{self.path}: the manifest lists no file {name!r}")
        return self.path / name


def load(path: str | os.PathLike) -> Bundle:
    """Read and verify a bundle: schema version, required keys, and the size and sha256 of every listed file."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not a bundle (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: not a metaedge bundle manifest")
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise BundleError(f"{manifest_path}: schema_version is missing or not an integer")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{path}: bundle schema {version} is newer than this metaedge reads ({SCHEMA_VERSION}); upgrade metaedge"
        )
    if manifest.get("digest") != manifest_digest(manifest):
        raise BundleError(f"{manifest_path}: the manifest was edited after export (its digest does not match)")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise BundleError(f"{manifest_path}: missing required key(s) {missing}")
    problem = next(jsonschema.Draft202012Validator(MANIFEST_SCHEMA).iter_errors(manifest), None)
    if problem is not None:
        where = "/".join(str(p) for p in problem.absolute_path) or "the manifest"
        raise BundleError(f"{manifest_path}: {where}: {problem.message}")
    for name, entry in manifest["files"].items():
        file = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{manifest_path}: file name {name!r} points outside the bundle")
        if not file.is_file():
            raise BundleError(f"{path}: {name} is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise BundleError(
                f"{path}: {name} has {size} bytes, the manifest says {entry['bytes']} (truncated or changed)"
            )
        if sha256_file(file) != entry["sha256"]:
            raise BundleError(f"{path}: {name} does not match its sha256 in the manifest (changed or corrupted)")
    return Bundle(path=path, manifest=manifest)


def write(out: str | os.PathLike, manifest: dict, files: dict[str, Path], overwrite: bool = False) -> Bundle:
    """Write `files` (name -> source path) and the manifest with their hashes, all or nothing.

    The bundle is assembled in a temporary sibling directory and renamed into place, so a failure at any
    point leaves no half-written bundle at `out`.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError(f"{out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; a bundle is meant to be read by others
    try:
        entries = {}
        for name, source in files.items():
            shutil.copyfile(source, staging / name)
            entries[name] = {"sha256": sha256_file(staging / name), "bytes": (staging / name).stat().st_size}
        manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **manifest, "files": entries}
        manifest["digest"] = manifest_digest(manifest)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load(out)


def check_rewritable(bundle: Bundle) -> None:
    """Refuse to rewrite a bundle whose folder holds files its manifest does not list: a rewrite would drop them."""
    listed = set(bundle.manifest["files"]) | {MANIFEST}
    unlisted = sorted(p.name for p in bundle.path.iterdir() if p.name not in listed)
    if unlisted:
        raise BundleError(f"{bundle.path}: holds files the manifest does not list ({', '.join(unlisted)}); "
                          "move them out first, the rewrite would drop them")  # fmt: skip


def replace_files(bundle: Bundle, replacements: dict[str, Path]) -> Bundle:
    """Write the verified `bundle` again in place with some of its files replaced (name -> new source), all or
    nothing; everything else in the manifest, the model id included, stays as it was, its hashes and digest follow."""
    check_rewritable(bundle)
    unknown = sorted(set(replacements) - set(bundle.manifest["files"]))
    if unknown:
        raise BundleError(f"{bundle.path}: the manifest lists no file {unknown[0]!r}")
    files = {name: replacements.get(name, bundle.path / name) for name in bundle.manifest["files"]}
    manifest = {k: v for k, v in bundle.manifest.items() if k not in ("files", "digest")}
    return write(bundle.path, manifest, files, overwrite=True)


def update_manifest(path: str | os.PathLike, entries: dict) -> Bundle:
    """Set top-level manifest `entries` of a verified bundle (e.g. a recalibrated `open_set`) and its digest.

    Only keys that describe how the files are used may change this way: the files and their hashes stay as
    they are. The new manifest is written beside the old one and renamed over it, so a crash leaves either.
    """
    bundle = load(path)
    fixed = {"format", "schema_version", "files", "digest"} & set(entries)
    if fixed:
        raise BundleError(f"{bundle.path}: {sorted(fixed)} cannot be updated in place; export the bundle again")
    manifest = {**bundle.manifest, **entries}
    manifest["digest"] = manifest_digest(manifest)
    fd, staging = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=bundle.path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(manifest, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(staging, (bundle.path / MANIFEST).stat().st_mode & 0o777)
        os.replace(staging, bundle.path / MANIFEST)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return load(bundle.path)
