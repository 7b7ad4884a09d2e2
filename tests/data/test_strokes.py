"""Stroke re-rendering: parsed in the image's frame, faithful when unjittered, seeded, loaded as extra images."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from conftest import OMNIGLOT, make_tree, omniglot_like
from PIL import Image

from metaedge.data import PreprocessSpec, open_dataset
from metaedge.data.strokes import StrokeIndex, StrokeJitter, parse_strokes, render, render_variants
from metaedge.errors import DataError

STROKE_ZIP = OMNIGLOT / "strokes_background_small1.zip"
IMAGE_ZIP = OMNIGLOT / "images_background_small1.zip"
L_SHAPE = "START\n10,-10,0\n10,-90,50\nBREAK\n10,-90,60\n90,-90,90\nBREAK\n"


def test_parse_flips_y_into_image_coordinates_and_splits_strokes():
    strokes = parse_strokes(L_SHAPE, "l.txt")
    assert len(strokes) == 2
    np.testing.assert_array_equal(strokes[0], [[10, 10], [10, 90]])
    with pytest.raises(DataError, match="bad.txt: not a stroke file"):
        parse_strokes("START\nhello\n", "bad.txt")
    with pytest.raises(DataError, match="empty.txt: no strokes"):
        parse_strokes("START\nBREAK\n", "empty.txt")


def test_render_draws_ink_where_the_pen_went():
    image = np.asarray(render(parse_strokes(L_SHAPE, "l.txt"), None, StrokeJitter()).convert("L"))
    assert image.shape == (105, 105)
    assert image[50, 10] == 0 and image[90, 50] == 0  # on the strokes: ink
    assert image[30, 60] == 255  # away from them: paper


def test_variants_are_seeded_and_differ():
    strokes = parse_strokes(L_SHAPE, "l.txt")
    spec = PreprocessSpec(size=28)
    a = render_variants(strokes, 3, spec, seed=5)
    assert a.shape == (3, 1, 28, 28) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, render_variants(strokes, 3, spec, seed=5))
    assert not np.array_equal(a[0], a[1])


@pytest.mark.skipif(not STROKE_ZIP.is_file(), reason="the shared Omniglot data is absent")
def test_unjittered_rendering_overlaps_the_real_scan():
    index = StrokeIndex([STROKE_ZIP])
    with zipfile.ZipFile(IMAGE_ZIP) as z:
        members = [n for n in z.namelist() if n.endswith(".png")][::400]
        for member in members:
            real = np.asarray(Image.open(io.BytesIO(z.read(member))).convert("L")) < 128
            text, where = index.find(member)
            mine = np.asarray(render(parse_strokes(text, where), None, StrokeJitter()).convert("L")) < 128
            assert (real & mine).sum() / (real | mine).sum() > 0.6, member  # same frame, same pen: mostly the same ink


@pytest.mark.skipif(not STROKE_ZIP.is_file(), reason="the shared Omniglot data is absent")
def test_load_appends_variants_of_the_same_class_and_drawer():
    ds = open_dataset([IMAGE_ZIP])
    ds = ds.subset(ds.groups()[:1])
    ds = type(ds)(sources=ds.sources, classes=ds.classes[:2]).with_rotations((0, 1))
    spec = PreprocessSpec(size=28)
    plain = ds.load(spec)
    more = ds.load(spec, StrokeIndex([STROKE_ZIP]), stroke_variants=2, seed=0)
    assert len(more.pixels) == 3 * len(plain.pixels)
    np.testing.assert_array_equal(more.pixels[::3], plain.pixels)  # the scans, in order, each followed by 2 renders
    np.testing.assert_array_equal(more.labels[::3], plain.labels)
    assert (more.labels.reshape(-1, 3) == plain.labels[:, None]).all()
    assert (more.drawers.reshape(-1, 3) == plain.drawers[:, None]).all()
    # a rotated class gets its variants rotated too
    n = len(ds.classes[0].images)
    np.testing.assert_array_equal(more.pixels[3 * n + 1], np.rot90(more.pixels[1], 1, axes=(1, 2)))


def test_an_image_without_strokes_is_named(tmp_path):
    ds = open_dataset(make_tree(omniglot_like({"Alpha": 1}, drawers=1), tmp_path / "img"))
    strokes = tmp_path / "strokes" / "Beta" / "character01"
    strokes.mkdir(parents=True)
    (strokes / "0001_01.txt").write_text(L_SHAPE)
    with pytest.raises(DataError, match="no stroke file for this image"):
        ds.load(PreprocessSpec(size=16), StrokeIndex([tmp_path / "strokes"]), stroke_variants=1)
    with pytest.raises(DataError, match="no stroke files"):
        StrokeIndex([tmp_path / "img"])
