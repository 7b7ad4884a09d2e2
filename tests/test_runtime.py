"""The on-device runtime: enroll from a few images, classify, open-set, every kind of bad input."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metaedge import bundle as bundle_io
from metaedge.errors import DataError, MetaedgeError
from metaedge.gallery import Gallery, GalleryError
from metaedge.runtime import Runtime

SAMPLES = Path(__file__).resolve().parents[1] / "metaedge" / "reference" / "samples" / "Korean"
pytestmark = pytest.mark.slow


def character(n: int) -> list[Path]:
    return sorted((SAMPLES / f"character{n:02d}").glob("*.png"))


def snapshot(store: Path, bundle) -> tuple:
    """Everything a gallery holds, to prove a failed operation changed nothing."""
    b = bundle_io.load(bundle)
    with Gallery(store, b.model_id, b.embedding_dim, create=False, readonly=True) as g:
        return tuple((r.label, r.count, g.embeddings(r.label).tobytes()) for r in g.records())


@pytest.fixture
def store(tiny_bundle, tmp_path):
    """A gallery with characters 1-5 enrolled from their first 5 drawings."""
    path = tmp_path / "gallery.db"
    with Runtime(tiny_bundle, path) as rt:
        for n in range(1, 6):
            rt.enroll(f"char{n}", character(n)[:5])
    return path


def test_enroll_then_classify_unseen_drawings(tiny_bundle, store):
    with Runtime(tiny_bundle, store) as rt:
        assert rt.labels() == [f"char{n}" for n in range(1, 6)]
        queries = [p for n in range(1, 6) for p in character(n)[5:9]]
        truth = [f"char{n}" for n in range(1, 6) for _ in range(4)]
        preds = rt.classify(queries, top_k=3, threshold=None)
        accuracy = np.mean([p.label == t for p, t in zip(preds, truth)])
        assert accuracy > 0.5  # chance is 0.2 for this barely trained model
        for p in preds:
            assert len(p.top_k) == 3 and p.top_k[0][0] == p.label
            assert [s for _, s in p.top_k] == sorted((s for _, s in p.top_k), reverse=True)
            assert -1.0 <= p.score <= 1.0  # cosine similarity


def test_a_tie_goes_to_the_first_label_for_one_answer_and_for_several(tiny_bundle, tmp_path):
    """classify's top-1 (argmax) and its top-k (a stable sort) agree where classes score the same."""
    with Runtime(tiny_bundle, tmp_path / "g.db") as rt:
        for label in ("twin-b", "twin-a", "other"):  # enrolled out of order: the gallery sorts its labels
            rt.enroll(label, character(3 if label == "other" else 1)[:3])
        query = character(1)[7]
        one, three = rt.classify([query], threshold=None)[0], rt.classify([query], top_k=3, threshold=None)[0]
        assert three.top_k[0][1] == three.top_k[1][1]  # the twins' prototypes are the same vector
        assert one.label == three.label == "twin-a" and one.top_k == three.top_k[:1]


def test_threshold_rejects_and_none_never_does(tiny_bundle, store):
    with Runtime(tiny_bundle, store) as rt:
        image = character(1)[10]
        assert rt.classify([image], threshold=1.01)[0].unknown  # no cosine similarity reaches 1.01
        assert rt.classify([image], threshold=1.01)[0].label is None
        assert not rt.classify([image], threshold=None)[0].unknown
        assert rt.default_threshold() == rt.bundle.manifest["open_set"]["threshold"]


def test_every_input_kind_gives_the_same_embedding(tiny_bundle):
    path = character(3)[0]
    pil = Image.open(path)
    gray = np.asarray(pil.convert("L"))
    rgb = np.asarray(pil.convert("RGB"))
    with Runtime(tiny_bundle) as rt:
        z = rt.embed([path, path.read_bytes(), pil, gray, rgb, gray.astype(np.float32) / 255.0])
    for row in z[1:]:
        np.testing.assert_allclose(row, z[0], atol=1e-5)


def test_replace_and_append_and_remove(tiny_bundle, store):
    with Runtime(tiny_bundle, store) as rt:
        assert rt.enroll("char1", character(1)[5:7]).total_embeddings == 7
        assert rt.enroll("char1", character(1)[:1], replace=True).total_embeddings == 1
        rt.remove("char2")
        assert "char2" not in rt.labels()
        with pytest.raises(GalleryError, match="no class named 'nope'"):
            rt.remove("nope")


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = character(1)[0].read_bytes()
    files = {"truncated": good[: len(good) // 2], "empty": b"", "text": b"this is not a picture\n"}
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.png"
        out[name].write_bytes(data)
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")  # 400 megapixels of nothing: a few KB on disk
    out["bomb"] = tmp_path / "bomb.png"
    out["bomb"].write_bytes(bomb.getvalue())
    return out


@pytest.mark.parametrize(
    "bad, message",
    [("truncated", "not a readable image"), ("empty", "empty file"), ("text", "not a readable image"),
     ("bomb", "pixel limit")],
)  # fmt: skip
def test_bad_images_are_named_and_change_nothing(tiny_bundle, store, tmp_path, bad, message):
    path = _bad_files(tmp_path)[bad]
    before = snapshot(store, tiny_bundle)
    with Runtime(tiny_bundle, store) as rt:
        with pytest.raises(DataError, match=f"{path.name}.*{message}"):
            rt.enroll("new", [*character(7)[:2], path])
        with pytest.raises(DataError, match=path.name):
            rt.classify([path])
    assert snapshot(store, tiny_bundle) == before


@pytest.mark.parametrize("label", ["", "   ", "\t"])
def test_empty_labels_and_empty_classes_are_refused(tiny_bundle, store, label):
    before = snapshot(store, tiny_bundle)
    with Runtime(tiny_bundle, store) as rt:
        with pytest.raises(MetaedgeError):
            rt.enroll(label, character(8)[:2])
        with pytest.raises(DataError, match="no images"):
            rt.enroll("x", [])
    assert snapshot(store, tiny_bundle) == before


def test_gallery_of_another_bundle_is_refused(tiny_bundle, store, tmp_path):
    other = tmp_path / "other"
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    manifest["model_id"] = "protonet-conv4-000000000000"
    manifest["digest"] = bundle_io.manifest_digest(manifest)
    other.mkdir()
    for f in ("backbone.onnx", "verify.json"):
        (other / f).write_bytes((tiny_bundle / f).read_bytes())
    (other / "manifest.json").write_text(json.dumps(manifest))
    digest = hashlib.sha256(store.read_bytes()).hexdigest()
    with pytest.raises(GalleryError, match="was built for model"):
        Runtime(other, store)
    assert hashlib.sha256(store.read_bytes()).hexdigest() == digest


def test_empty_gallery_cannot_classify(tiny_bundle):
    with Runtime(tiny_bundle) as rt, pytest.raises(DataError, match="gallery is empty"):
        rt.classify([character(1)[0]])
