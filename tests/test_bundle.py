"""Bundle verification on copies of the shipped bundle: milliseconds per case, no training (unlike test_export's)."""

from __future__ import annotations

import json
import os
import shutil
import stat
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
    # Issue 17's single network, int8 with its calibration in the id; the ensemble it learnt from ships beside it.
    assert b.model_id.startswith("protonet-resnet12-") and "-int8-" in b.model_id and b.embedding_dim == 128
    assert bundle_io.load(REFERENCE_BUNDLE.parent / "ensemble").model_id.startswith("protonet-ensemble-")
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


@pytest.mark.parametrize(
    "version, message",
    [("1", "not an integer"), (None, "missing or not an integer"),
     (bundle_io.SCHEMA_VERSION + 1, "newer than this metaedge reads")],
)  # fmt: skip
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


def test_a_schema_violation_names_where_it_is(copy):
    manifest = manifest_of(copy)
    manifest["metric"]["scale"] = "1.0"
    resign(copy, manifest)
    with pytest.raises(bundle_io.BundleError, match=r"manifest.json: metric/scale: '1.0' is not of type 'number'$"):
        bundle_io.load(copy)
    manifest["metric"]["scale"], manifest["embedding_dim"] = 1.0, 0  # a top-level key is named as itself
    resign(copy, manifest)
    with pytest.raises(bundle_io.BundleError, match=r"manifest.json: embedding_dim: 0 is less than the minimum of 1$"):
        bundle_io.load(copy)
    manifest["embedding_dim"] = 576
    del manifest["metric"]["scale"]  # a missing key is reported where it is missing from: the whole manifest's level
    resign(copy, manifest)
    with pytest.raises(bundle_io.BundleError, match=r"manifest.json: metric: 'scale' is a required property$"):
        bundle_io.load(copy)


def test_write_stamps_the_format_and_is_readable_by_others(copy, tmp_path):
    """What the exporter hands over has no format, schema or files: write adds them, in a folder others may read."""
    manifest = {k: v for k, v in manifest_of(copy).items() if k not in ("format", "schema_version", "files", "digest")}
    out = tmp_path / "new" / "dir" / "bundle"  # parents made
    umask = os.umask(0o027)
    try:
        written = bundle_io.write(out, manifest, {"backbone.onnx": copy / "backbone.onnx"})
    finally:
        os.umask(umask)
    assert written.manifest["format"] == bundle_io.FORMAT
    assert written.manifest["schema_version"] == bundle_io.SCHEMA_VERSION
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # mkdtemp's 0o700 widened to what the umask allows
    # indented for a person reading it on the device, and exactly what was hashed
    assert (out / bundle_io.MANIFEST).read_text() == json.dumps(written.manifest, indent=2) + "\n"


def test_overwrite_replaces_the_whole_bundle(copy, tmp_path):
    manifest = {k: v for k, v in manifest_of(copy).items() if k not in ("files", "digest")}
    out = tmp_path / "out"
    bundle_io.write(out, manifest, {name: copy / name for name in ("backbone.onnx", "verify.json")})
    bundle_io.write(out, manifest, {"backbone.onnx": copy / "backbone.onnx"}, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["backbone.onnx", "manifest.json"]  # no stale verify.json
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_update_manifest_keeps_the_manifest_readable_as_it_was(copy):
    (copy / bundle_io.MANIFEST).chmod(0o640)
    updated = bundle_io.update_manifest(copy, {"open_set": {"threshold": -1.5}})
    assert stat.S_IMODE((copy / bundle_io.MANIFEST).stat().st_mode) == 0o640  # mkstemp's 0o600 is not kept
    assert (copy / bundle_io.MANIFEST).read_text() == json.dumps(updated.manifest, indent=2) + "\n"


def test_replace_files_refuses_a_name_the_manifest_does_not_list(tmp_path):
    bundle = bundle_io.load(shutil.copytree(REFERENCE_BUNDLE, tmp_path / "b"))
    snapshot = {p.name: p.read_bytes() for p in bundle.path.iterdir()}
    (tmp_path / "x.onnx").write_bytes(b"not listed")
    with pytest.raises(bundle_io.BundleError, match="lists no file 'x.onnx'"):
        bundle_io.replace_files(bundle, {"x.onnx": tmp_path / "x.onnx"})
    assert {p.name: p.read_bytes() for p in bundle.path.iterdir()} == snapshot
