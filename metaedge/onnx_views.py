"""Rewrite the sampling-grid test-time views of an enrollment graph exported before the separable form.

Until 54ab01a the exporter traced every view of metaedge/models/views.py through one GridSample over a constant
grid; since then a shift or zoom is two small constant matrix products (Einsum) and only a rotation keeps a grid,
because ONNX Runtime runs GridSample 10-20x slower (1.1-2.1 ms against 0.05-0.08 ms for 5 images x 3 views at
56 px). A bundle exported before then, whose checkpoints are gone, can still be brought to what `metaedge export`
writes today: the grid is in the graph, so the views it samples can be recognised and replaced by the same nodes
the exporter now emits. Nothing else in the graph changes, its quantization parameters included.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metaedge import bundle as bundle_io
from metaedge.errors import MetaedgeError

# The rewritten views must reproduce the sampled ones to float rounding (GridSample's float32 coordinate arithmetic
# puts its bilinear weights a few 1e-6 off the exact ones at 56 px) before anything downstream sees them: 1e-4 is
# still 1/40 of an 8-bit input step.
WARP_ATOL = 1e-4
# Downstream, an int8 graph's first QuantizeLinear may round a handful of pixels the other way.
MIN_COSINE = 0.999


class ViewsError(MetaedgeError):
    """A graph whose views cannot be rewritten: no GridSample, several, or a grid that is not metaedge's views."""


@dataclass(frozen=True)
class SampledViews:
    """What a graph's GridSample computes: the first `count` of VIEWS at `size` px, view-major over the batch."""

    node: object  # the GridSample onnx.NodeProto
    count: int
    size: int


def _probe(model, names: list[str], images: np.ndarray) -> list[np.ndarray]:
    """Run `model` (onnx.ModelProto) on images float32 (B, C, S, S) and return the tensors `names`."""
    import onnx

    from metaedge.ort import create_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    with tempfile.TemporaryDirectory(prefix="metaedge-views-") as tmp:
        onnx.save(probe, Path(tmp) / "probe.onnx")
        session = create_session(Path(tmp) / "probe.onnx", threads=1)
        return session.run(names, {model.graph.input[0].name: images})


def find_sampled_views(model, *, seed: int = 0) -> SampledViews:
    """Find the one GridSample of `model` (onnx.ModelProto; input (batch, C, S, S)) and check, by running the graph
    on two random images, that it samples the images repeated view-major through a constant grid equal to
    TestTimeViews(count, S).grid. Raises ViewsError naming what differs."""
    from metaedge.models.views import MAX_VIEWS, TestTimeViews

    samplers = [n for n in model.graph.node if n.op_type == "GridSample"]
    if len(samplers) != 1:
        raise ViewsError(f"expected one GridSample (the test-time views), found {len(samplers)}")
    node = samplers[0]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[2].HasField("dim_value") or dims[2].dim_value != dims[3].dim_value:
        raise ViewsError("the graph's input is not a batch of square images (batch, C, S, S)")
    channels, size = dims[1].dim_value, dims[2].dim_value
    images = np.random.default_rng(seed).random((2, channels, size, size), dtype=np.float32)
    sampled, grid = _probe(model, [node.input[0], node.input[1]], images)
    count = sampled.shape[0] // 2
    if sampled.shape != (count * 2, channels, size, size) or grid.shape != (count * 2, size, size, 2):
        raise ViewsError(f"GridSample takes {sampled.shape} and a grid {grid.shape}, not views of the input images")
    if not 1 <= count <= MAX_VIEWS:
        raise ViewsError(f"GridSample samples {count} copies of each image; metaedge has 1 to {MAX_VIEWS} views")
    repeated = np.broadcast_to(images, (count, *images.shape))
    if not np.array_equal(sampled.reshape(count, 2, channels, size, size), repeated):
        raise ViewsError("GridSample does not sample the input images repeated view-major")
    grid = grid.reshape(count, 2, size, size, 2)
    if not np.array_equal(grid[:, 0], grid[:, 1]):
        raise ViewsError("the sampling grid depends on the images; it is not a fixed set of views")
    expected = TestTimeViews(count, size).grid.numpy()
    if not np.allclose(grid[:, 0], expected, atol=1e-6):
        raise ViewsError(f"the sampling grid is not metaedge's first {count} views at {size} px")
    return SampledViews(node=node, count=count, size=size)


def view_nodes(source: str, out: str, count: int, size: int, opset: int, prefix: str = "views/"):
    """ONNX nodes and initializers that warp `source` (B, C, S, S) into `out` (count*B, C, S, S), view-major,
    exactly as TestTimeViews(count, size).warp does: Einsum by constant matrices for shifts and zooms, a
    GridSample for rotations. Returns (nodes, initializers)."""
    from onnx import helper, numpy_helper

    from metaedge.models.views import TestTimeViews

    views = TestTimeViews(count, size)
    nodes, inits, warped = [], [], []
    for v in range(count):
        name = f"{prefix}{v}"
        matrices = views.matrices(v)
        if matrices is None:
            inits.append(numpy_helper.from_array(views.grid[v : v + 1].numpy(), f"{name}/grid"))
            inits.append(numpy_helper.from_array(np.array([size, size, 2], np.int64), f"{name}/grid_tail"))
            nodes += [
                helper.make_node("Shape", [source], [f"{name}/batch"], start=0, end=1),
                helper.make_node("Concat", [f"{name}/batch", f"{name}/grid_tail"], [f"{name}/grid_shape"], axis=0),
                helper.make_node("Expand", [f"{name}/grid", f"{name}/grid_shape"], [f"{name}/grid_b"]),
                # opset 20 renamed GridSample's "bilinear" to "linear"; the sampling is the same.
                helper.make_node("GridSample", [source, f"{name}/grid_b"], [name], align_corners=0,
                                 mode="linear" if opset >= 20 else "bilinear", padding_mode="border"),
            ]  # fmt: skip
            warped.append(name)
            continue
        rows, cols = matrices
        x = source
        for axis, matrix, equation in (("cols", cols, "bchk,jk->bchj"), ("rows", rows, "bckw,ik->bciw")):
            if matrix is None:
                continue
            inits.append(numpy_helper.from_array(matrix.numpy(), f"{name}/{axis}"))
            nodes.append(helper.make_node("Einsum", [x, f"{name}/{axis}"], [f"{name}/{axis}_out"], equation=equation))
            x = f"{name}/{axis}_out"
        warped.append(x)
    nodes.append(helper.make_node("Concat", warped, [out], axis=0))
    return nodes, inits


def _prune(graph) -> None:
    """Drop nodes whose outputs nothing reads, then initializers and value infos nothing names, in place."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    produced = {o for n in graph.node for o in n.output}
    infos = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def separate_views(model) -> tuple[object, SampledViews]:
    """A copy of `model` (onnx.ModelProto) with its sampled views replaced by view_nodes(); returns (copy, views).

    The replacement writes the GridSample's own output name, so every node after it reads the same tensor."""
    import onnx

    found = find_sampled_views(model)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    nodes, inits = view_nodes(model.graph.input[0].name, found.node.output[0], found.count, found.size, opset)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    rest = [n for n in graph.node if n.op_type != "GridSample"]  # find_sampled_views checked there is one
    del graph.node[:]
    graph.node.extend(nodes + rest)  # the views read only the graph input, so they may come first
    graph.initializer.extend(inits)
    _prune(graph)
    onnx.checker.check_model(out)
    return out, found


@dataclass(frozen=True)
class SeparateReport:
    """What separate_bundle_views did to one bundle."""

    bundle: Path
    file: str  # the rewritten graph
    views: int
    size: int
    nodes: tuple[int, int]  # before, after
    warp_max_diff: float  # views, rewritten against sampled
    min_cosine: float  # embeddings, rewritten graph against the original


def separate_bundle_views(path: str | os.PathLike, *, check_images: int = 64, seed: int = 0) -> SeparateReport:
    """Rewrite the sampled views of the existing bundle's enrollment graph at `path` in place; the manifest's
    sha256, sizes and digest follow, everything else in it (the model id included) stays as it was.

    Before anything at `path` changes, ONNX Runtime runs both graphs on `check_images` random images: the warped
    images must agree within WARP_ATOL and the embeddings within MIN_COSINE. Raises BundleError for a bundle that
    does not verify, ViewsError for one without sampled views, MetaedgeError where the checks fail."""
    import onnx

    from metaedge.parity import row_cosines

    loaded = bundle_io.load(path)  # verifies every hash first
    path = loaded.path
    bundle_io.check_rewritable(loaded)
    name = loaded.enroll_onnx_path.name
    original = onnx.load(str(path / name))
    try:
        rewritten, found = separate_views(original)
    except ViewsError as e:
        raise ViewsError(f"{path / name}: {e}") from None
    _, channels, size, _ = loaded.manifest["backbone"]["input"]["shape"]
    images = np.random.default_rng(seed).random((check_images, channels, size, size), dtype=np.float32)
    # One run of each graph gives both the warped images and the embeddings.
    names = [found.node.output[0], original.graph.output[0].name]
    before_warp, before = _probe(original, names, images)
    after_warp, after = _probe(rewritten, names, images)
    warp_diff = float(np.abs(before_warp - after_warp).max())
    min_cosine = float(row_cosines(before, after).min())
    with tempfile.TemporaryDirectory(prefix="metaedge-views-") as tmp:
        new_file = Path(tmp) / name
        onnx.save(rewritten, new_file)
        if not (warp_diff <= WARP_ATOL and min_cosine >= MIN_COSINE):  # written so that a NaN fails too
            raise MetaedgeError(
                f"{path / name}: the rewritten views differ from the sampled ones (warp max |diff| {warp_diff:.3g}, "
                f"embedding min cosine {min_cosine:.6f}); the bundle is unchanged"
            )
        bundle_io.replace_files(loaded, {name: new_file})
    return SeparateReport(bundle=path, file=name, views=found.count, size=found.size,
                          nodes=(len(original.graph.node), len(rewritten.graph.node)),
                          warp_max_diff=warp_diff, min_cosine=min_cosine)  # fmt: skip
