"""Strip what an ONNX exporter records about the machine that ran it from a graph, and restrip existing bundles.

torch.onnx's exporter annotates every node with `pkg.torch.onnx.stack_trace` (the source files and virtual
environment it ran from, by absolute path), `...fx_node`, `...name_scopes`, `...class_hierarchy` and
`namespace`, and the graph and its values with `pkg.torch.export.*` and `pkg.onnxscript.*` entries. No runtime
reads them, and a deployment artefact should not reveal where it was built. What a runtime or a reader of the
graph needs stays: nodes, names, initializers, opsets, the producer, and other metadata (ONNX Runtime's
quantizer records `onnx.quant.pre_process`, for instance).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaedge import bundle as bundle_io
from metaedge.errors import MetaedgeError

EXPORTER_PREFIXES = ("pkg.torch.", "pkg.onnxscript.")
EXPORTER_KEYS = frozenset({"namespace"})
# An absolute POSIX path of two or more parts, or a Windows drive path: where a free-text doc string names a file.
_PATH = re.compile(r"(?<![\w.])/[\w.@+~-]+/[\w.@+~-]|\b[A-Za-z]:\\")


def is_exporter_key(key: str) -> bool:
    """True for a metadata key the exporter writes for its own bookkeeping (never read by a runtime)."""
    return key in EXPORTER_KEYS or key.startswith(EXPORTER_PREFIXES)


def _holders(model) -> Iterator[tuple[str, object, bool]]:
    """Every message of `model` that can carry metadata_props or a doc string: (where, message, free_doc).

    free_doc: its doc string is only ever the exporter's (nodes, values, initializers, function bodies), so it
    goes whatever it says; a model's or graph's own doc string goes only where it names a path.
    """
    yield "model", model, False

    def graph(g, where: str) -> Iterator[tuple[str, object, bool]]:
        yield where, g, False
        for kind, values in (("input", g.input), ("output", g.output), ("value", g.value_info),
                             ("initializer", g.initializer)):  # fmt: skip
            for v in values:
                yield f"{where} {kind} {v.name}", v, True
        yield from nodes(g.node, where)

    def nodes(items, where: str) -> Iterator[tuple[str, object, bool]]:
        for n in items:
            yield f"{where} node {n.name or n.op_type}", n, True
            for a in n.attribute:  # control flow (If, Loop, Scan) carries subgraphs
                if a.HasField("g"):
                    yield from graph(a.g, f"{where} node {n.name} subgraph {a.name}")
                for i, sub in enumerate(a.graphs):
                    yield from graph(sub, f"{where} node {n.name} subgraph {a.name}[{i}]")

    yield from graph(model.graph, "graph")
    for f in model.functions:
        yield f"function {f.name}", f, True
        yield from nodes(f.node, f"function {f.name}")


def _has_props(message) -> bool:
    return any(field.name == "metadata_props" for field in message.DESCRIPTOR.fields)


def exporter_metadata(model) -> list[str]:
    """Where `model` (onnx.ModelProto) still holds exporter metadata or a doc string naming a path, one line each."""
    found = []
    for where, message, free_doc in _holders(model):
        if _has_props(message):
            found += [f"{where}: {p.key}" for p in message.metadata_props if is_exporter_key(p.key)]
        if message.doc_string and (free_doc or _PATH.search(message.doc_string)):
            found.append(f"{where}: doc_string")
    return found


def strip_model(model) -> int:
    """Remove exporter metadata and path-naming doc strings from `model` (onnx.ModelProto) in place.

    Returns how many entries went. The computation is untouched: only metadata_props and doc strings change.
    """
    removed = 0
    for _, message, free_doc in _holders(model):
        if _has_props(message):
            kept = [p for p in message.metadata_props if not is_exporter_key(p.key)]
            removed += len(message.metadata_props) - len(kept)
            if len(kept) != len(message.metadata_props):
                del message.metadata_props[:]
                message.metadata_props.extend(kept)
        if message.doc_string and (free_doc or _PATH.search(message.doc_string)):
            message.doc_string = ""
            removed += 1
    return removed


def strip_file(path: str | os.PathLike, out: str | os.PathLike | None = None) -> int:
    """Strip the self-contained ONNX file `path` into `out` (default: in place, atomically); returns entries removed.

    The file is rewritten even when nothing is removed, so `out` always exists afterwards.
    """
    import onnx

    path = Path(path)
    out = Path(out) if out is not None else path
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for files that are not ONNX
        raise MetaedgeError(f"{path}: not a readable ONNX model ({e})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise MetaedgeError(f"{path}: weights in external files; metaedge exports one self-contained file")
    removed = strip_model(model)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return removed


@dataclass(frozen=True)
class StripReport:
    """What strip_bundle did: per ONNX file, (bytes before, bytes after, entries removed)."""

    bundle: Path
    files: dict[str, tuple[int, int, int]]

    @property
    def changed(self) -> bool:
        return any(removed for _, _, removed in self.files.values())


def strip_bundle(path: str | os.PathLike, *, check_images: int = 8, seed: int = 0) -> StripReport:
    """Strip every ONNX graph of the existing bundle at `path` in place; the manifest's sha256, sizes and digest
    follow, everything else in it (the model id included: the computation is the same) stays as it was.

    Before anything at `path` changes, ONNX Runtime runs each graph, old and stripped, on `check_images` random
    inputs of the manifest's input shape (float32, (check_images, C, S, S)) and must give bit-identical
    embeddings. The bundle is rewritten all or nothing (metaedge.bundle.write). Raises BundleError for a bundle
    that does not verify, and MetaedgeError where the embeddings differ or the folder holds files the manifest
    does not list (they would be lost).
    """
    loaded = bundle_io.load(path)  # verifies every hash first: never re-hash a file that was already changed
    path = loaded.path
    bundle_io.check_rewritable(loaded)
    _, channels, size, _ = loaded.manifest["backbone"]["input"]["shape"]
    images = np.random.default_rng(seed).standard_normal((check_images, channels, size, size)).astype(np.float32)
    report: dict[str, tuple[int, int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="metaedge-strip-") as tmp:
        stripped_files = {}
        for name in [n for n in loaded.manifest["files"] if n.endswith(".onnx")]:
            stripped = Path(tmp) / name
            removed = strip_file(path / name, stripped)
            before, after = _embed(path / name, images), _embed(stripped, images)
            if not np.array_equal(before, after):
                diff = float(np.abs(before - after).max())
                raise MetaedgeError(f"{path / name}: the stripped graph's embeddings differ from the original's "
                                    f"(max |diff| {diff:.3g}); the bundle is unchanged")  # fmt: skip
            report[name] = ((path / name).stat().st_size, stripped.stat().st_size, removed)
            stripped_files[name] = stripped
        if any(removed for _, _, removed in report.values()):
            bundle_io.replace_files(loaded, stripped_files)
    return StripReport(path, report)


def _embed(path: Path, images: np.ndarray) -> np.ndarray:
    """images float32 (N, C, S, S) -> embeddings (N, D) from one single-threaded ONNX Runtime run."""
    from metaedge.ort import create_session

    session = create_session(path, ("CPUExecutionProvider",), threads=1)  # one thread: a fixed summation order
    return session.run(None, {session.get_inputs()[0].name: images})[0]
