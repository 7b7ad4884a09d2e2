"""Cluttered Omniglot scenes (metaedge/data/clutter.py) from the real Omniglot files."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import OMNIGLOT_ZIPS, make_tree, omniglot_like

from metaedge.data import open_dataset, split_groups
from metaedge.data.clutter import (
    ClutterEpisodes,
    Glyphs,
    glyph_batch,
    make_scene,
    parse_clutter,
    scene_set,
    warp_glyph,
)
from metaedge.errors import DataError


@pytest.fixture(scope="module")
def dataset():
    if not all(p.is_file() for p in OMNIGLOT_ZIPS):
        pytest.skip("the shared Omniglot data is not beside the checkout")
    return open_dataset(OMNIGLOT_ZIPS)


@pytest.fixture(scope="module")
def glyphs(dataset) -> Glyphs:
    return Glyphs.from_dataset(dataset.subset(["Greek", "Korean"]))


def test_glyphs_are_ink_by_drawer(glyphs):
    assert glyphs.ink.shape[1:] == (105, 105) and glyphs.ink.dtype == bool
    assert list(glyphs.drawer_ids) == list(range(1, 21))
    # every class by every drawer exactly once, and the table points at the right drawing
    c, d = 7, 13
    index = glyphs.table[c, d]
    assert glyphs.labels[index] == c and glyphs.drawers[index] == glyphs.drawer_ids[d]
    # ink is a minority of the page (black strokes on white paper, not the other way round)
    assert 0.01 < glyphs.ink.mean() < 0.2


def test_scene_shapes(glyphs):
    s = make_scene(glyphs, np.random.default_rng(0), clutter=8, shot=3)
    assert s.scene.shape == (3, 96, 96) and s.scene.dtype == np.uint8
    assert s.mask.shape == (96, 96) and s.mask.dtype == bool and s.mask.any()
    assert s.references.shape == (3, 3, 32, 32) and s.references.dtype == np.uint8
    assert len(s.scene_drawers) == 8 and len(s.reference_drawers) == 3
    for ref in s.references:  # each reference is drawn, on black, and roughly centred
        ys, xs = np.nonzero(ref.any(axis=0))
        assert len(ys) > 0 and abs(ys.mean() - 15.5) < 8 and abs(xs.mean() - 15.5) < 8


@pytest.mark.parametrize("clutter", [4, 64, 256])
def test_mask_is_exactly_the_targets_pixels_and_never_covered(glyphs, clutter):
    for seed in range(10):
        s = make_scene(glyphs, np.random.default_rng(seed), clutter=clutter)
        colours = s.scene[:, s.mask].T
        # Pasted last, the target keeps its one colour on every pixel of its mask...
        assert (colours == colours[0]).all(), f"seed {seed}: the target was drawn over"
        if clutter == 4 and colours[0].any():
            # ...and no pixel outside the mask has it (with 4 characters, no other one draws that exact colour).
            same = (s.scene == colours[0][:, None, None]).all(axis=0)
            np.testing.assert_array_equal(same, s.mask)


def test_absent_target_has_empty_mask(glyphs):
    s = make_scene(glyphs, np.random.default_rng(3), clutter=16, present=False)
    assert not s.mask.any() and s.scene.any() and not s.present


def test_one_colour_set_is_the_coloured_set_in_white(glyphs):
    coloured = scene_set(glyphs, clutter=16, count=5, seed=4)
    white = scene_set(glyphs, clutter=16, count=5, seed=4, one_colour=True)
    np.testing.assert_array_equal(coloured.masks, white.masks)
    assert set(np.unique(white.scenes)) == {0, 255} and set(np.unique(white.references)) == {0, 255}
    # white everywhere a coloured character has any non-black channel
    assert (white.scenes[:, 0][coloured.scenes.any(axis=1)] == 255).all()
    assert len(np.unique(coloured.scenes)) > 2


def test_seeds_reproduce(glyphs):
    a = scene_set(glyphs, clutter=32, count=6, seed=1)
    b = scene_set(glyphs, clutter=32, count=6, seed=1)
    c = scene_set(glyphs, clutter=32, count=6, seed=2)
    np.testing.assert_array_equal(a.scenes, b.scenes)
    np.testing.assert_array_equal(a.references, b.references)
    assert not np.array_equal(a.scenes, c.scenes)
    tail = scene_set(glyphs, clutter=32, count=2, seed=1, start=4)  # a later slice is the same scenes
    np.testing.assert_array_equal(a.scenes[4:], tail.scenes)
    # training episodes depend on (seed, index) only: episode 5 alone is episode 5 after 0..4
    episodes = ClutterEpisodes(glyphs, [4, 8], one_colour=0.5, seed=9)
    after = [episodes.episode(i) for i in range(6)][-1]
    alone = ClutterEpisodes(glyphs, [4, 8], one_colour=0.5, seed=9).episode(5)
    np.testing.assert_array_equal(after.scene, alone.scene)
    np.testing.assert_array_equal(after.mask, alone.mask)


def test_training_episodes_mix_levels_and_colours(glyphs):
    episodes = ClutterEpisodes(glyphs, [4, 32], one_colour=0.5, seed=0)
    batch = episodes.batch(range(40))
    assert set(batch.clutter) == {4, 32}
    one = np.array([set(np.unique(s)) <= {0, 255} for s in batch.scenes])
    assert 5 < one.sum() < 35


def test_drawers_of_reference_and_scene_are_disjoint(glyphs):
    for seed in range(30):
        s = make_scene(glyphs, np.random.default_rng(seed), clutter=32, shot=5)
        assert len(set(s.reference_drawers)) == 5
        assert not set(s.reference_drawers) & set(s.scene_drawers), f"seed {seed}"


def test_distractors_are_other_classes(glyphs):
    for seed in range(20):
        s = make_scene(glyphs, np.random.default_rng(seed), clutter=64)
        assert s.scene_classes[-1] == s.target_class
        assert s.target_class not in s.scene_classes[:-1]
        assert len(set(s.scene_classes[:-1])) > 20  # drawn from all the other classes
    absent = make_scene(glyphs, np.random.default_rng(0), clutter=64, present=False)
    assert absent.target_class not in absent.scene_classes


def test_split_holds_out_alphabets(dataset):
    split = split_groups(dataset.groups(), holdout=2, val=1, seed=0)
    train = Glyphs.from_dataset(dataset.subset(split.train))
    test = Glyphs.from_dataset(dataset.subset(split.test))
    assert set(train.class_groups) == set(split.train)
    assert not set(train.class_groups) & set(test.class_groups)
    # scenes of the test set draw only test alphabets' characters
    assert set(test.class_groups) == set(split.test)


def test_warp_shrinks_to_scene_scale(glyphs):
    rng = np.random.default_rng(0)
    sizes = [warp_glyph(glyphs.image(i), rng).shape for i in range(0, 1280, 32)]
    heights = np.array([h for h, _ in sizes])
    assert heights.max() <= 96 and 10 < np.median(heights) < 40  # a 105-pixel page shrunk by 32/105, scaled 0.5-2x
    unscaled = [warp_glyph(glyphs.image(i), rng, scaled=False).shape[0] for i in range(0, 1280, 32)]
    assert max(unscaled) <= 40


def test_bad_requests_are_clear_errors(glyphs):
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="shot must be 1..10"):
        make_scene(glyphs, rng, clutter=4, shot=11)
    with pytest.raises(DataError, match="at least one character"):
        make_scene(glyphs, rng, clutter=0)
    with pytest.raises(DataError, match="fractions"):
        ClutterEpisodes(glyphs, [4], one_colour=1.5)
    assert parse_clutter("4, 32") == [4, 32]
    for bad in ("4,x", "0", ""):
        with pytest.raises(DataError, match="clutter levels"):
            parse_clutter(bad)


def test_glyphs_need_every_drawer(tmp_path):
    files = omniglot_like({"A": 3}, drawers=4)
    del files["A/character02/1002_03.png"]
    root = make_tree(files, tmp_path / "data")
    with pytest.raises(DataError, match="lacks drawings by some drawers"):
        Glyphs.from_dataset(open_dataset(root))


def test_glyph_batch_is_seeded_isolated_characters(glyphs):
    indices = glyphs.table[[0, 5, 9], 2]
    x = glyph_batch(glyphs, indices, np.random.default_rng(4))
    assert x.shape == (3, 3, 64, 64) and x.dtype == np.uint8
    for img in x:  # one character, one colour, on black
        ink = img.max(axis=0) > 0
        assert 10 < ink.sum() < 64 * 64 // 2
        assert len(np.unique(img[:, ink], axis=1).T) == 1
    assert (glyph_batch(glyphs, indices, np.random.default_rng(4)) == x).all()
    assert not (glyph_batch(glyphs, indices, np.random.default_rng(5)) == x).all()
    white = glyph_batch(glyphs, indices, np.random.default_rng(4), one_colour=1.0)
    assert set(np.unique(white)) == {0, 255}
    # warped as scenes are, scale included: the same drawing comes out at different sizes
    sizes = {int((img.max(axis=0) > 0).sum()) for img in glyph_batch(glyphs, [indices[0]] * 8,
                                                                     np.random.default_rng(0))}  # fmt: skip
    assert max(sizes) > 2 * min(sizes)
