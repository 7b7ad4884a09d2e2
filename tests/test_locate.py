"""Runtime.locate and `metaedge locate` (metaedge/locate.py, metaedge/cli_locate.py) on a tiny localisation
bundle exported here, with real generated scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import metaedge
from metaedge import checkpoint as ckpt
from metaedge.cli import app
from metaedge.data.clutter import scene_set
from metaedge.evaluate_segment import held_out_glyphs, scenes_to_tensors
from metaedge.locate import Localization, locate, prepare_scene, rle_decode, rle_encode

runner = CliRunner()


@pytest.fixture(scope="module")
def scenes(tiny_seg_run):
    return scene_set(held_out_glyphs(ckpt.read_meta(ckpt.resolve(tiny_seg_run)), "x", None, None), clutter=4,
                     count=3, seed=5)  # fmt: skip


def _hwc(chw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(chw.transpose(1, 2, 0))


def _png(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


def test_reference_bundle_paths():
    assert metaedge.reference.bundle_path() == metaedge.reference.bundle_path("classify")
    assert (metaedge.reference.bundle_path("classify") / "manifest.json").is_file()
    locate = metaedge.reference.HERE / "locate_bundle"
    if (locate / "manifest.json").is_file():
        assert metaedge.reference.bundle_path("locate") == locate
    else:  # not shipped yet: the error says how to make one
        with pytest.raises(metaedge.MetaedgeError, match="ships no locate bundle yet"):
            metaedge.reference.bundle_path("locate")
    with pytest.raises(metaedge.MetaedgeError, match="'classify', 'locate'"):
        metaedge.reference.bundle_path("detect")


def test_locate_api(tiny_locate_bundle, scenes):
    with metaedge.Runtime(bundle=tiny_locate_bundle) as rt:
        rt.enroll("a", [_hwc(scenes.references[0, 0])])
        rt.enroll("b", [_hwc(scenes.references[1, 0])])
        found = rt.locate(_hwc(scenes.scenes[0]))
        assert [type(f) for f in found] == [Localization] * 2 and {f.label for f in found} == {"a", "b"}
        assert found[0].score >= found[1].score  # best first
        threshold = rt.bundle.manifest["locate"]["threshold"]
        for f in found:
            assert f.mask.shape == (96, 96) and f.mask.dtype == bool
            assert f.present == (f.score >= threshold)
            ys, xs = np.nonzero(f.mask)
            if len(xs):
                assert f.box == (xs.min(), ys.min(), xs.max(), ys.max())
                assert f.center == pytest.approx((xs.mean(), ys.mean()))
            else:
                assert f.box is None and f.center is None
        assert all(f.present for f in rt.locate(_hwc(scenes.scenes[0]), threshold=None))
        assert not any(f.present for f in rt.locate(_hwc(scenes.scenes[0]), threshold=1.5))
        (only,) = rt.locate(_hwc(scenes.scenes[0]), labels=["b"])
        assert only.label == "b" and only.score == pytest.approx(next(f.score for f in found if f.label == "b"))


def test_locate_masks_are_the_models(tiny_locate_bundle, tiny_seg_run, scenes):
    method = ckpt.load(tiny_seg_run).method.eval()
    x, refs = scenes_to_tensors(scenes)
    with torch.no_grad():
        probability = torch.sigmoid(method.mask_logits(x, method.prototypes(refs))[:, 0]).numpy()
    expected = probability > 0.3
    with metaedge.Runtime(bundle=tiny_locate_bundle) as rt:
        for i in range(len(scenes)):
            rt.enroll(f"c{i}", [_hwc(scenes.references[i, 0])])
            (f,) = rt.locate(_hwc(scenes.scenes[i]), labels=[f"c{i}"])
            assert (f.mask != expected[i]).mean() < 1e-3 and f.score == pytest.approx(probability[i].max(), abs=1e-5)


def test_scenes_of_other_sizes(tiny_locate_bundle, scenes):
    """A larger canvas runs at its own resolution: the scene pasted at an offset (a multiple of the stride) on
    black gets the same mask probabilities in its middle; a scene over MAX_SIDE is resized down and its masks come back
    at full size."""
    scene = _hwc(scenes.scenes[0])
    canvas = np.zeros((150, 131, 3), np.uint8)
    canvas[20:116, 28:124] = scene
    with metaedge.Runtime(bundle=tiny_locate_bundle) as rt:
        rt.enroll("a", [_hwc(scenes.references[0, 0])])
        (small,) = rt.locate(scene)
        (big,) = rt.locate(canvas)
        assert big.mask.shape == (150, 131) and (big.mask[20:116, 28:124] == small.mask).mean() > 0.99
        locator, protos = rt.locator, rt.gallery.prototypes()[1]
        (huge,) = rt.locate(np.kron(canvas, np.ones((5, 5, 1), np.uint8)))  # 750 x 655 > MAX_SIDE
        assert huge.mask.shape == (750, 655)
    prepared = [prepare_scene(x, locator.spec, 4) for x in (scene, canvas)]
    assert prepared[1].pixels.shape == (1, 3, 152, 132)  # padded to multiples of the stride
    p_small, p_big = (locator.probabilities(p.pixels, protos)[0, 0] for p in prepared)
    # Half a receptive field (66 pixels) away from every edge, where neither input's border is seen: the same.
    assert np.abs(p_big[20 + 36 : 20 + 60, 28 + 36 : 28 + 60] - p_small[36:60, 36:60]).max() < 1e-4


def test_rle_round_trip():
    mask = np.zeros((3, 4), bool)
    mask[0, 0] = mask[1, 0] = mask[2, 3] = True
    rle = rle_encode(mask)
    assert rle == {"size": [3, 4], "counts": [0, 2, 9, 1]}  # column-major, starting with background
    assert (rle_decode(rle) == mask).all()
    assert rle_encode(np.zeros((2, 2), bool))["counts"] == [4]


def _bomb(path: Path) -> Path:
    Image.new("1", (20000, 20000)).save(path)  # 400 megapixels, a few kilobytes of PNG
    return path


def test_bad_input_one_line_errors_gallery_unchanged(tiny_locate_bundle, scenes, tmp_path):
    store = tmp_path / "g.db"
    bad = {"empty": b"", "not an image": b"hello, world", "1x1": _png(np.full((1, 1, 3), 200, np.uint8),
           tmp_path / "one.png").read_bytes(), "20000x20000": _bomb(tmp_path / "bomb.png").read_bytes()}  # fmt: skip
    with metaedge.Runtime(bundle=tiny_locate_bundle, store=store) as rt:
        rt.enroll("a", [_hwc(scenes.references[0, 0])])
        before = (rt.labels(), rt.gallery.embeddings("a").copy())
        for what, data in bad.items():
            with pytest.raises(metaedge.DataError) as e:
                rt.locate(data)
            assert "\n" not in str(e.value), what
        assert "pixel limit" in str(pytest.raises(metaedge.DataError, rt.locate, bad["20000x20000"]).value)
        with pytest.raises(metaedge.DataError, match="too small to locate"):
            rt.locate(np.eye(5, dtype=np.uint8)[:, :, None].repeat(3, axis=2) * 255)
        with pytest.raises(metaedge.DataError, match="not enrolled: 'zz'"):
            rt.locate(_hwc(scenes.scenes[0]), labels=["zz"])
        with pytest.raises(metaedge.MetaedgeError, match="a locate bundle cannot classify"):
            rt.classify([_hwc(scenes.references[0, 0])])
        assert rt.labels() == before[0] and (rt.gallery.embeddings("a") == before[1]).all()
    with metaedge.Runtime() as rt:
        for call in (lambda: rt.locate(_hwc(scenes.scenes[0])), lambda: rt.locator):
            with pytest.raises(metaedge.MetaedgeError, match="a classify bundle cannot locate"):
                call()


def test_cli_locate_json_and_overlay(tiny_locate_bundle, scenes, tmp_path):
    ref = _png(_hwc(scenes.references[0, 0]), tmp_path / "ref.png")
    scene = _png(_hwc(scenes.scenes[0]), tmp_path / "scene.png")
    common = ["--bundle", str(tiny_locate_bundle), "--store", str(tmp_path / "g.db")]
    assert runner.invoke(app, ["enroll", "ka", str(ref), *common]).exit_code == 0
    second = _png(_hwc(scenes.references[1, 0]), tmp_path / "r2.png")
    assert runner.invoke(app, ["enroll", "na", str(second), *common]).exit_code == 0
    result = runner.invoke(app, ["locate", str(scene), "--label", "ka", "--json", "--overlay", str(tmp_path / "o"),
                                 *common])  # fmt: skip
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    (f,) = entry["found"]
    assert entry["scene"] == str(scene) and f["label"] == "ka" and set(f) >= {"score", "present", "box", "center"}
    with metaedge.Runtime(bundle=tiny_locate_bundle, store=tmp_path / "g.db") as rt:
        (direct,) = rt.locate(scene, labels=["ka"])
    assert (rle_decode(f["mask"]) == direct.mask).all() and f["score"] == pytest.approx(direct.score)
    overlay = Image.open(tmp_path / "o" / "scene.overlay.png")
    assert overlay.size == (384, 384) and overlay.mode == "RGB"
    text = runner.invoke(app, ["locate", str(scene), *common])
    assert text.exit_code == 0 and text.stdout.count("scene.png") == 2  # both classes, one line each


@pytest.mark.parametrize("case", ["empty", "text", "1x1", "bomb", "label", "classify-bundle"])
def test_cli_locate_bad_input(case, tiny_locate_bundle, scenes, tmp_path):
    common = ["--bundle", str(tiny_locate_bundle), "--store", str(tmp_path / "g.db")]
    ref = _png(_hwc(scenes.references[0, 0]), tmp_path / "ref.png")
    assert runner.invoke(app, ["enroll", "ka", str(ref), *common]).exit_code == 0
    listed = runner.invoke(app, ["gallery", "list", "--json", *common]).stdout
    scene = _png(_hwc(scenes.scenes[0]), tmp_path / "scene.png")
    args = {"empty": [str(tmp_path / "e.png")], "text": [str(tmp_path / "t.png")],
            "1x1": [str(_png(np.full((1, 1, 3), 9, np.uint8), tmp_path / "one.png"))],
            "bomb": [str(_bomb(tmp_path / "bomb.png"))], "label": [str(scene), "--label", "zz"],
            "classify-bundle": [str(scene), "--bundle", str(metaedge.reference.bundle_path())]}[case]  # fmt: skip
    (tmp_path / "e.png").write_bytes(b"")
    (tmp_path / "t.png").write_bytes(b"not an image")
    result = runner.invoke(app, ["locate", *common, *args])
    assert result.exit_code == 1 and result.stderr.startswith("error:") and len(result.stderr.splitlines()) == 1
    expected = {"empty": "empty file", "text": "not a readable image", "1x1": "blank image", "bomb": "pixel limit",
                "label": "not enrolled: 'zz'", "classify-bundle": "a classify bundle cannot locate"}[case]  # fmt: skip
    assert expected in result.stderr
    assert runner.invoke(app, ["gallery", "list", "--json", *common]).stdout == listed


def test_demo_locate(tiny_locate_bundle, tmp_path):
    result = runner.invoke(app, ["demo", "--task", "locate", "--bundle", str(tiny_locate_bundle), "--way", "3",
                                 "--overlay", str(tmp_path / "o"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["way"] == r["scenes"] == 3 and 0.0 <= r["iou"] <= 1.0 and len(r["overlays"]) == 3
    assert all(Path(p).is_file() for p in r["overlays"])


def test_from_masks_is_from_mask_for_every_class():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 13, 17)) > 0.97
    masks[1] = False  # an empty mask: no box, no centre
    masks[2] = False
    masks[2, 12, 0] = True  # a single pixel in a corner
    scores, present = rng.random(5), rng.random(5) > 0.5
    batched = Localization.from_masks(list("abcde"), scores, present, masks)
    for i, f in enumerate(batched):
        one = Localization.from_mask("abcde"[i], float(scores[i]), bool(present[i]), masks[i])
        assert (f.label, f.score, f.present, f.box) == (one.label, one.score, one.present, one.box)
        assert (f.center is None) == (one.center is None)
        assert f.center is None or f.center == pytest.approx(one.center)
    assert batched[1].box is None and batched[2].box == (0, 12, 0, 12)


def test_decode_floor_skips_classes_that_cannot_be_present(tiny_locate_bundle, scenes):
    """Under the floor a class is not decoded: absent, score 0, empty mask; a floor nothing is under changes
    nothing; the runtime applies the bundle's floor with the bundle's threshold only."""
    scene = _hwc(scenes.scenes[0])
    with metaedge.Runtime(bundle=tiny_locate_bundle) as rt:
        for i in range(3):
            rt.enroll(f"c{i}", [_hwc(scenes.references[i, 0])])
        assert rt.bundle.manifest["locate"]["decode_floor"] == rt.bundle.manifest["locate"]["open_set"]["decode_floor"]
        rt.locate(scene)
        locator, (names, protos) = rt.locator, rt.gallery.prototypes()
        every = locate(locator, scene, names, protos, 0.5)
        low = locate(locator, scene, names, protos, 0.5, floor=-2.0)
        assert [(f.label, f.score, f.present) for f in low] == [(f.label, f.score, f.present) for f in every]
        assert all((a.mask == b.mask).all() for a, b in zip(low, every))
        assert all(f.score > 0 for f in every)
        high = locate(locator, scene, names, protos, 0.0, floor=2.0)
        assert all(f.score == 0.0 and not f.present and not f.mask.any() and f.box is None for f in high)
        assert sorted(f.label for f in high) == sorted(names)
        # only the classes at or over the floor are decoded, and they answer as before
        features = locator.features(prepare_scene(scene, locator.spec, 4).pixels)
        peaks = locator.cosine(features, protos)[0].max(axis=(1, 2))
        middle = float(np.sort(peaks)[1])
        some = {f.label: f for f in locate(locator, scene, names, protos, 0.0, floor=middle)}
        for f in every:
            decoded = peaks[names.index(f.label)] >= middle
            assert (some[f.label].score == f.score) if decoded else (some[f.label].score == 0.0)
        locator.decode_floor = 2.0
        assert all(f.score == 0.0 and not f.present for f in rt.locate(scene))
        assert all(f.score > 0 for f in rt.locate(scene, threshold=0.5))
        assert all(f.score > 0 and f.present for f in rt.locate(scene, threshold=None))


def test_locator_runs_on_one_thread_unless_told(tiny_locate_bundle):
    from metaedge import bundle as bundle_io
    from metaedge.locate import Locator

    b = bundle_io.load(tiny_locate_bundle)
    paths = (b.file("dense.onnx"), b.file("decoder.onnx"), b.manifest["locate"])
    for threads, expected in ((0, 1), (2, 2)):
        locator = Locator(*paths, threads=threads)
        assert locator.threads == expected
        for session in (locator.dense, locator.decoder):
            assert session.get_session_options().intra_op_num_threads == expected
