"""Property-based fuzzing of the parsers a client reaches: image decoding, gallery JSON import, bundle manifests.

Whatever the bytes, the only exceptions are metaedge's own errors, and a refused import leaves the gallery as it was.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import tempfile

import numpy as np
import pytest
from PIL import Image

# Hypothesis keeps caches in ./.hypothesis unless told otherwise: not in the checkout.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "metaedge-hypothesis"))
hypothesis = pytest.importorskip("hypothesis", reason="property-based fuzzing needs hypothesis (pip install .[test])")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from metaedge import bundle as bundle_io  # noqa: E402
from metaedge.errors import MetaedgeError  # noqa: E402
from metaedge.gallery import Gallery  # noqa: E402
from metaedge.images import open_image  # noqa: E402
from metaedge.runtime import REFERENCE_BUNDLE  # noqa: E402

# database=None: no .hypothesis/ directory left in the checkout.
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((24, 24)) > 0.5).astype(np.uint8) * 255).save(buf, "PNG")
    return buf.getvalue()


SEEDS = [_png(0), _png(1)]
with io.BytesIO() as _b:
    Image.new("RGB", (16, 16), (200, 10, 10)).save(_b, "JPEG")
    SEEDS.append(_b.getvalue())


@st.composite
def mangled(draw) -> bytes:
    """A real image with bytes flipped, cut or spliced: the inputs most likely to reach deep into a decoder."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=64)) if draw(st.booleans()) else bytes(data)


@FUZZ
@given(st.one_of(st.binary(max_size=512), mangled()))
def test_image_decoding_raises_only_metaedge_errors(data):
    try:
        image = open_image(data)
    except MetaedgeError:
        return
    assert image.mode in ("L", "RGB", "1", "CMYK", "YCbCr", "I", "P", "LAB", "HSV") and image.width * image.height > 0


# -- gallery import ------------------------------------------------------------------------------------------------

DIM = 4
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def exports(draw) -> bytes:
    """A valid export document with one part replaced by something arbitrary, or plain garbage."""
    vectors = np.arange(2 * DIM, dtype="<f4").reshape(2, DIM)
    entry = {"label": "fuzzed", "created": 1.0, "updated": 2.0, "sources": ["a", None],
             "embeddings": {"dtype": "<f4", "shape": [2, DIM], "data": base64.b64encode(vectors.tobytes()).decode()}}
    doc = {"format": "metaedge-gallery-export", "schema_version": 1, "model_id": "m", "embedding_dim": DIM,
           "exported": 0.0, "classes": [entry]}  # fmt: skip
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.binary(max_size=200))
    if choice == 1:
        doc[draw(st.sampled_from(sorted(doc)))] = draw(json_values)
    elif choice == 2:
        entry[draw(st.sampled_from(sorted(entry)))] = draw(json_values)
    else:
        entry["embeddings"][draw(st.sampled_from(["dtype", "shape", "data"]))] = draw(json_values)
    return json.dumps(doc).encode()


@FUZZ
@given(exports())
def test_gallery_import_refuses_cleanly_and_changes_nothing(tmp_path, data):
    source = tmp_path / "in.json"
    source.write_bytes(data)
    with Gallery(tmp_path / "g.db", "m", DIM) as g:
        if "kept" not in g.labels():
            g.enroll("kept", np.ones((1, DIM), np.float32))
        before = (g.records(), g.prototypes()[1].tobytes())
        try:
            g.import_json(source, replace=True)
        except MetaedgeError:
            assert (g.records(), g.prototypes()[1].tobytes()) == before
            return
        for label in g.labels():  # an accepted document: back to the one class for the next example
            if label != "kept":
                g.remove(label)


# -- bundle manifest -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory):
    target = tmp_path_factory.mktemp("fuzz") / "bundle"
    shutil.copytree(REFERENCE_BUNDLE, target)
    return target


def _load_mangled(bundle_dir, manifest: dict, data, resign: bool) -> None:
    key = data.draw(st.sampled_from(sorted(manifest)))
    manifest[key] = data.draw(json_values)
    if resign:  # the digest recomputed, so the parser gets past it to the fields themselves
        manifest["digest"] = bundle_io.manifest_digest(manifest)
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    try:
        b = bundle_io.load(bundle_dir)
        # Loading checks hashes; what a runtime reads next must fail as cleanly.
        b.preprocess, b.model_id, b.embedding_dim, b.metric, b.onnx_path  # noqa: B018
    except MetaedgeError:
        pass


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode)))
def test_bundle_manifest_that_is_not_json_or_not_ours_is_refused(bundle_copy, text):
    (bundle_copy / "manifest.json").write_bytes(text)
    with pytest.raises(MetaedgeError):
        bundle_io.load(bundle_copy)


@FUZZ
@given(st.data())
def test_bundle_manifest_edited_without_its_digest_is_refused(bundle_copy, data):
    manifest = json.loads((REFERENCE_BUNDLE / "manifest.json").read_text())
    _load_mangled(bundle_copy, manifest, data, resign=False)


@settings(FUZZ, derandomize=True, phases=[Phase.explicit, Phase.generate], max_examples=60)
@given(st.data())
def test_bundle_manifest_re_signed_with_wrong_types_is_refused(bundle_copy, data):
    manifest = json.loads((REFERENCE_BUNDLE / "manifest.json").read_text())
    _load_mangled(bundle_copy, manifest, data, resign=True)
