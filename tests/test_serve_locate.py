"""POST /v1/locate on a localisation bundle (a tiny one trained and exported here, tests/test_export_segment.py),
held against Runtime.locate on the same scene; and each task's route refused on the other task's bundle."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (pip install httpx)")
from fastapi.testclient import TestClient  # noqa: E402

import metaedge  # noqa: E402
from metaedge import checkpoint as ckpt  # noqa: E402
from metaedge.data.clutter import scene_set  # noqa: E402
from metaedge.evaluate_segment import held_out_glyphs  # noqa: E402
from metaedge.locate import rle_decode  # noqa: E402
from metaedge.serve import ServeConfig, create_app  # noqa: E402


def png(chw: np.ndarray) -> bytes:
    """A (3, H, W) uint8 scene or reference as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def scenes(tiny_seg_run):
    glyphs = held_out_glyphs(ckpt.read_meta(ckpt.resolve(tiny_seg_run)), "x", None, None)
    return scene_set(glyphs, clutter=4, count=2, seed=5)


@pytest.fixture(scope="module")
def located(tiny_locate_bundle, scenes, tmp_path_factory):
    store = tmp_path_factory.mktemp("serve-locate") / "g.db"
    with TestClient(create_app(ServeConfig(bundle=str(tiny_locate_bundle), store=str(store)))) as c:
        for i, label in enumerate(("a", "b")):
            r = c.post("/v1/classes", data={"label": label}, files=[("images", (f"{label}.png",
                       png(scenes.references[i, 0]), "image/png"))])  # fmt: skip
            assert r.status_code == 201, r.text
        yield c, store


def test_locate_answers_as_runtime_locate_on_the_same_scene(located, tiny_locate_bundle, scenes):
    client, store = located
    assert client.get("/v1/info").json()["task"] == "locate"
    scene = png(scenes.scenes[0])
    r = client.post("/v1/locate", files=[("images", ("s0.png", scene, "image/png"))])
    assert r.status_code == 200, r.text
    (answer,) = r.json()
    assert answer["scene"] == "s0.png" and set(answer) == {"scene", "found"}
    with metaedge.Runtime(tiny_locate_bundle, store, readonly=True) as rt:
        expected = rt.locate(scene)
        only_b = rt.locate(scene, labels=["b"], threshold=None)
    scores = [f["score"] for f in answer["found"]]
    assert scores == sorted(scores, reverse=True)  # best first
    by_label = {f["label"]: f for f in answer["found"]}  # (two near-tied scores may come in either order)
    assert sorted(by_label) == sorted(e.label for e in expected) == ["a", "b"]
    for want in expected:
        got = by_label[want.label]
        assert got["score"] == pytest.approx(want.score, abs=1e-6) and got["present"] == want.present
        assert got["box"] == (list(want.box) if want.box else None)
        assert (rle_decode(got["mask"]) == want.mask).all() and got["mask"]["size"] == [96, 96]
        cli = json.loads(json.dumps(want.to_dict()))  # the CLI's --json, field for field (the score to 1e-6 above)
        assert {**got, "score": 0} == {**cli, "score": 0}
    # the raw body, the class filter and no threshold reach the runtime too
    raw = client.post("/v1/locate?label=b&no_threshold=true", content=scene, headers={"Content-Type": "image/png"})
    (f,) = raw.json()[0]["found"]
    assert f["label"] == "b" and f["present"] is True and f["score"] == pytest.approx(only_b[0].score, abs=1e-6)
    two = client.post("/v1/locate?threshold=2", files=[("images", (f"s{i}.png", png(s), "image/png"))
                                                       for i, s in enumerate(scenes.scenes)])  # fmt: skip
    assert [s["scene"] for s in two.json()] == ["s0.png", "s1.png"]
    assert not any(f["present"] for s in two.json() for f in s["found"])  # scores are probabilities, under 2


def test_locate_refuses_what_the_runtime_refuses(located, scenes):
    client, _ = located
    before = client.get("/v1/gallery/export").json()["classes"]
    scene = [("images", ("s.png", png(scenes.scenes[0]), "image/png"))]
    r = client.post("/v1/locate?label=nobody", files=scene)
    assert r.status_code == 422 and r.json() == {"error": "not enrolled: 'nobody'"}
    r = client.post("/v1/locate", files=[("images", ("tiny.png", png(np.zeros((3, 4, 4), np.uint8)), "image/png"))])
    assert r.status_code == 422 and r.json()["error"].startswith("tiny.png")
    assert client.get("/v1/gallery/export").json()["classes"] == before


def test_each_task_is_refused_on_the_other_tasks_bundle(located, scenes, tmp_path):
    """409 with a one-line error naming both tasks, the bundle's path kept from the client; nothing changed."""
    client, _ = located
    scene = [("images", ("s.png", png(scenes.scenes[0]), "image/png"))]
    before = client.get("/v1/gallery/export").json()["classes"]
    r = client.post("/v1/classify", files=scene)
    assert r.status_code == 409, r.text
    assert r.json()["error"].startswith("the bundle: a locate bundle cannot classify images; use a classify bundle")
    assert client.get("/v1/gallery/export").json()["classes"] == before
    with TestClient(create_app(ServeConfig(store=str(tmp_path / "c.db")))) as c:  # the shipped classify bundle
        assert c.get("/v1/info").json()["task"] == "classify"
        r = c.post("/v1/locate", files=scene)
        assert r.status_code == 409 and "a classify bundle cannot locate in scenes" in r.json()["error"]
        assert "\n" not in r.json()["error"] and str(metaedge.runtime.REFERENCE_BUNDLE) not in r.json()["error"]
        assert c.get("/v1/classes").json() == []
