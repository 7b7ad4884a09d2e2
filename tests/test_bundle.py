"""Bundle verification on copies of the shipped bundle: milliseconds per case, no training (unlike test_export's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from metaedge import bundle as bundle_io
from metaedge.runtime import REFERENCE_BUNDLE


@pytest.fixture
def copy(tmp_path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(REFERENCE_BUNDLE, target)
    return target


def manifest_of(path: Path) -> dict:
    return json.loads((path / bundle_io.MANIFEST).read_text())


def resign(path: Path, manifest: dict) -> None:
    """Write `manifest` with a recomputed digest, as a forger who knows the format would."""
    manifest["digest"] = bundle_io.manifest_digest(manifest)
    (path / bundle_io.MANIFEST).write_text(json.dumps(manifest))


def test_the_shipped_bundle_loads_and_reads(copy):
    b = bundle_io.load(copy)
    assert b.model_id.startswith("protonet-ensemble-") and b.embedding_dim > 0
    assert b.onnx_path == copy / "backbone.onnx" and b.has_enroll_graph and b.enroll_onnx_path == copy / "enroll.onnx"
    assert b.file("verify.json") == copy / "verify.json"
    with pytest.raises(bundle_io.BundleError, match="lists no file 'nope.onnx'"):
        b.file("nope.onnx")


def test_no_manifest_or_not_json_or_not_ours(copy, tmp_path):
    with pytest.raises(bundle_io.BundleError, match="not a bundle"):
        bundle_io.load(tmp_path)
    (copy / bundle_io.MANIFEST).write_text("{not json")
    with pytest.raises(bundle_io.BundleError, match="not valid JSON"):
        bundle_io.load(copy)
    (copy / bundle_io.MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(bundle_io.BundleError, match="not a metaedge bundle manifest"):
        bundle_io.load(copy)


@pytest.mark.parametrize("version, message", [("1", "not an integer"), (None, "missing or not an integer"),
                                              (bundle_io.SCHEMA_VERSION + 1, "newer than this metaedge reads")])  # fmt: skip
def test_schema_version(copy, version, message):
    manifest = manifest_of(copy)
    manifest["schema_version"] = version
    resign(copy, manifest)
    with pytest.raises(bundle_io.BundleError, match=message):
        bundle_io.load(copy)


def test_an_edited_manifest_is_refused_by_its_digest(copy):
    manifest = manifest_of(copy)
    manifest["open_set"]["threshold"] = 0.0
    (copy / bundle_io.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(bundle_io.BundleError, match="edited after export"):
        bundle_io.load(copy)


def test_a_missing_required_key_is_named(copy):
    manifest = manifest_of(copy)
    del manifest["embedding_dim"]
    resign(copy, manifest)
    with pytest.raises(bundle_io.BundleError, match=r"missing required key\(s\) \['embedding_dim'\]"):
        bundle_io.load(copy)


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/passwd"])
def test_a_file_name_outside_the_bundle_is_refused(copy, name):
    manifest = manifest_of(copy)
    manifest["files"][name] = manifest["files"]["verify.json"]
    resign(copy, manifest)
    with pytest.raises(bundle_io.BundleError, match="points outside the bundle"):
        bundle_io.load(copy)


def test_missing_truncated_and_changed_files(copy):
    (copy / "verify.json").unlink()
    with pytest.raises(bundle_io.BundleError, match="verify.json is missing"):
        bundle_io.load(copy)
    shutil.copy(REFERENCE_BUNDLE / "verify.json", copy / "verify.json")
    data = (copy / "enroll.onnx").read_bytes()
    (copy / "enroll.onnx").write_bytes(data[:-1])
    with pytest.raises(bundle_io.BundleError, match=f"enroll.onnx has {len(data) - 1} bytes, the manifest says"):
        bundle_io.load(copy)
    (copy / "enroll.onnx").write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])  # same size, one bit
    with pytest.raises(bundle_io.BundleError, match="enroll.onnx does not match its sha256"):
        bundle_io.load(copy)


def test_write_is_all_or_nothing_and_hashes_what_it_wrote(copy, tmp_path):
    files = {name: copy / name for name in ("backbone.onnx", "verify.json")}
    manifest = {k: v for k, v in manifest_of(copy).items() if k not in ("files", "digest")}
    out = tmp_path / "out"
    written = bundle_io.write(out, manifest, files)
    assert sorted(p.name for p in out.iterdir()) == ["backbone.onnx", "manifest.json", "verify.json"]
    assert written.manifest["files"]["verify.json"] == {"sha256": bundle_io.sha256_file(copy / "verify.json"),
                                                        "bytes": (copy / "verify.json").stat().st_size}  # fmt: skip
    with pytest.raises(bundle_io.BundleError, match="already exists"):
        bundle_io.write(out, manifest, files)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileNotFoundError):  # a source vanished half way: the old bundle stays, no staging left
        bundle_io.write(out, manifest, {**files, "enroll.onnx": tmp_path / "gone.onnx"}, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_update_manifest_changes_only_what_it_may(copy):
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.name != bundle_io.MANIFEST}
    updated = bundle_io.update_manifest(copy, {"open_set": {"threshold": -1.5}})
    assert updated.manifest["open_set"] == {"threshold": -1.5}
    assert bundle_io.load(copy).manifest["digest"] == bundle_io.manifest_digest(updated.manifest)
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.name != bundle_io.MANIFEST} == before
    for key in ("files", "digest", "format", "schema_version"):
        with pytest.raises(bundle_io.BundleError, match="cannot be updated in place"):
            bundle_io.update_manifest(copy, {key: {}})
    assert [p.name for p in copy.iterdir() if p.name.startswith(".")] == []
