"""Bundles reveal nothing of the machine that exported them: no stack traces, no checkout, venv or home paths."""

from __future__ import annotations

import json
import shutil
import site
import sys
import sysconfig
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from metaedge import bundle as bundle_io
from metaedge import exporter, onnx_clean
from metaedge.bundle import BundleError
from metaedge.errors import MetaedgeError
from metaedge.runtime import REFERENCE_BUNDLE

CHECKOUT = Path(__file__).resolve().parents[1]


def machine_paths() -> list[str]:
    """Folders of this machine an exported file must not name: the checkout, site-packages, the venv, home."""
    paths = {str(CHECKOUT), sys.prefix, sys.exec_prefix, str(Path.home()), *site.getsitepackages(),
             sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}  # fmt: skip
    return sorted(p for p in paths if len(p.strip("/")) >= 3)  # "/" or "/ro" would match anything


def assert_reveals_nothing(bundle: Path) -> None:
    for file in sorted(bundle.iterdir()):
        data = file.read_bytes()
        for path in machine_paths():
            assert path.encode() not in data, f"{file.name} names {path}"
        assert b"site-packages" not in data and b'File "' not in data, file.name
        if file.suffix == ".onnx":
            assert onnx_clean.exporter_metadata(onnx.load(str(file))) == [], file.name


def test_export_reveals_no_machine_paths(tiny_bundle):
    assert machine_paths()  # the test checks something
    assert_reveals_nothing(tiny_bundle)


@pytest.mark.slow
def test_int8_export_reveals_no_machine_paths(tiny_run_dir, tmp_path):
    out = exporter.export_checkpoint(tiny_run_dir, tmp_path / "b8", int8=True, parity_episodes=20).bundle
    assert out.manifest["backbone"]["precision"] == "int8"
    assert_reveals_nothing(out.path)


def test_reference_bundle_holds_no_exporter_metadata():
    assert_reveals_nothing(REFERENCE_BUNDLE)
    bundle_io.load(REFERENCE_BUNDLE)  # and its manifest's hashes still match


def _graph_with_metadata() -> onnx.ModelProto:
    """x (1, 2) -> If(cond) -> y: exporter metadata on a node, a value, the graph, a subgraph's node; doc strings."""
    trace = 'File "/home/someone/venv/lib/python3.11/site-packages/torch/nn/modules/module.py", line 1'

    def branch(name: str, op: str) -> onnx.GraphProto:
        node = helper.make_node(op, ["x"], [f"{name}_out"], name=f"{name}_node", doc_string=trace)
        helper.set_metadata_props(node, {"pkg.torch.onnx.stack_trace": trace, "namespace": "a: b"})
        return helper.make_graph([node], name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT,
                                                                                   [1, 2])])  # fmt: skip

    cond = helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True]))
    helper.set_metadata_props(cond, {"pkg.torch.onnx.fx_node": "%c", "kept.by.reader": "yes"})
    iff = helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch("then", "Relu"),
                           else_branch=branch("else", "Neg"))  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    helper.set_metadata_props(x, {"pkg.torch.onnx.original_node_name": "x"})
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([cond, iff], "g", [x], [y], doc_string="traced from /work/main/metaedge/exporter.py")
    helper.set_metadata_props(graph, {"pkg.torch.export.ExportedProgram.graph_signature": "# inputs"})
    model = helper.make_model(graph, doc_string="a small test graph", opset_imports=[helper.make_opsetid("", 18)])
    helper.set_metadata_props(model, {"onnx.quant.pre_process": "onnxruntime.quant"})
    return model


def test_strip_model_removes_exporter_metadata_keeps_the_rest():
    model = _graph_with_metadata()
    found = onnx_clean.exporter_metadata(model)
    assert "graph node if subgraph then_branch node then_node: pkg.torch.onnx.stack_trace" in found
    assert "graph: doc_string" in found and "graph input x: pkg.torch.onnx.original_node_name" in found
    assert "model: doc_string" not in found  # no path in it: a reader's
    assert onnx_clean.strip_model(model) == len(found) == 10  # 3 per branch node, 1 on cond, x, graph x2
    assert onnx_clean.exporter_metadata(model) == []
    onnx.checker.check_model(model, full_check=True)
    assert {p.key: p.value for p in model.metadata_props} == {"onnx.quant.pre_process": "onnxruntime.quant"}
    assert {p.key for p in model.graph.node[0].metadata_props} == {"kept.by.reader"}
    assert model.doc_string == "a small test graph" and model.graph.doc_string == ""
    assert [n.name for n in model.graph.node] == ["", "if"]
    assert b"site-packages" not in model.SerializeToString()


def test_strip_file_refuses_what_is_not_onnx(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"\xff\x00 not a model")
    with pytest.raises(MetaedgeError, match="x.onnx: not a readable ONNX model"):
        onnx_clean.strip_file(tmp_path / "x.onnx")
    assert (tmp_path / "x.onnx").read_bytes() == b"\xff\x00 not a model"


@pytest.fixture
def unstripped_bundle(tiny_run_dir, tmp_path, monkeypatch) -> Path:
    """The tiny run exported as metaedge did before it stripped graphs: the exporter's metadata left in."""
    monkeypatch.setattr(onnx_clean, "strip_file", lambda path, out=None: 0)
    path = exporter.export_checkpoint(tiny_run_dir, tmp_path / "old", parity_episodes=20).bundle.path
    monkeypatch.undo()
    assert onnx_clean.exporter_metadata(onnx.load(str(path / "backbone.onnx")))  # the test starts dirty
    return path


def _embeddings(bundle: Path) -> np.ndarray:
    from metaedge.ort import create_session

    b = bundle_io.load(bundle)
    _, c, s, _ = b.manifest["backbone"]["input"]["shape"]
    images = np.random.default_rng(1).standard_normal((16, c, s, s)).astype(np.float32)
    session = create_session(b.onnx_path, threads=1)
    return session.run(None, {session.get_inputs()[0].name: images})[0]


@pytest.mark.slow
def test_strip_bundle_in_place(unstripped_bundle):
    before_manifest = json.loads((unstripped_bundle / "manifest.json").read_text())
    before_embeddings = _embeddings(unstripped_bundle)
    report = onnx_clean.strip_bundle(unstripped_bundle)
    assert report.changed and set(report.files) == {"backbone.onnx"}
    old_bytes, new_bytes, removed = report.files["backbone.onnx"]
    assert removed > 0 and new_bytes < old_bytes == before_manifest["files"]["backbone.onnx"]["bytes"]
    assert_reveals_nothing(unstripped_bundle)
    loaded = bundle_io.load(unstripped_bundle)  # hashes, sizes and digest all consistent
    after = loaded.manifest
    assert after["files"]["backbone.onnx"]["bytes"] == new_bytes
    assert after["files"]["backbone.onnx"]["sha256"] != before_manifest["files"]["backbone.onnx"]["sha256"]
    assert after["files"]["verify.json"] == before_manifest["files"]["verify.json"]
    ignore = ("files", "digest")
    assert {k: v for k, v in after.items() if k not in ignore} == {
        k: v for k, v in before_manifest.items() if k not in ignore
    }  # model id and all: the computation is the same
    np.testing.assert_array_equal(_embeddings(unstripped_bundle), before_embeddings)
    # Once is enough: a second run changes nothing, not even the file times' content.
    snapshot = {p.name: p.read_bytes() for p in unstripped_bundle.iterdir()}
    assert not onnx_clean.strip_bundle(unstripped_bundle).changed
    assert {p.name: p.read_bytes() for p in unstripped_bundle.iterdir()} == snapshot


def test_strip_bundle_leaves_a_bad_bundle_as_it_was(tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    (copy / "notes.txt").write_text("mine")
    snapshot = {p.name: p.read_bytes() for p in copy.iterdir()}
    with pytest.raises(MetaedgeError, match="notes.txt"):
        onnx_clean.strip_bundle(copy)
    (copy / "notes.txt").unlink()
    with (copy / "backbone.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="backbone.onnx has"):
        onnx_clean.strip_bundle(copy)
    snapshot["backbone.onnx"] += b"\0"
    del snapshot["notes.txt"]
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == snapshot
