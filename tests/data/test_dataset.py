"""Loading datasets: layouts, folders and zips, merging and de-duplication, junk and corrupt files."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tree, make_zip, omniglot_like, png_bytes

from metaedge.data import PreprocessSpec, open_dataset
from metaedge.errors import DataError


def test_group_class_layout_from_folder_and_zip_agree(tmp_path):
    files = omniglot_like({"Alpha": 3, "Beta": 2})
    folder = open_dataset(make_tree(files, tmp_path / "tree"))
    archive = open_dataset(make_zip({f"wrapper/{k}": v for k, v in files.items()}, tmp_path / "set.zip"))
    for ds in (folder, archive):
        assert ds.groups() == ["Alpha", "Beta"]
        assert [c.key for c in ds.classes] == [
            "Alpha/character01", "Alpha/character02", "Alpha/character03", "Beta/character01", "Beta/character02"
        ]  # fmt: skip
        assert ds.num_images == 20
        assert sorted(r.drawer for r in ds.classes[0].images) == [1, 2, 3, 4]
    a, b = folder.load(PreprocessSpec()), archive.load(PreprocessSpec())
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_plain_class_layout_uses_root_name_as_group(tmp_path):
    files = {f"{cls}/img{i}.jpg": png_bytes(10 * c + i) for c, cls in enumerate(["cat", "dog"]) for i in range(3)}
    ds = open_dataset(make_tree(files, tmp_path / "pets"))
    assert ds.groups() == ["pets"]
    assert [c.name for c in ds.classes] == ["cat", "dog"]
    assert all(r.drawer is None for c in ds.classes for r in c.images)


def test_junk_entries_are_skipped(tmp_path):
    files = omniglot_like({"Alpha": 2}, drawers=2)
    junk = {"__MACOSX/Alpha/._x.png": b"\0\1", "Alpha/.DS_Store": b"junk", "Alpha/character01/notes.txt": b"hi"}
    ds = open_dataset(make_zip({**files, **junk}, tmp_path / "j.zip"))
    assert ds.num_images == 4
    assert ds.skipped == 3
    ds.load(PreprocessSpec())  # nothing junk is decoded


def test_identical_classes_in_two_roots_count_once(tmp_path):
    shared = omniglot_like({"Greek": 2}, seed0=100)
    one = make_zip({**shared, **omniglot_like({"Korean": 2}, seed0=200)}, tmp_path / "one.zip")
    two = make_tree({**shared, **omniglot_like({"Tagalog": 1}, seed0=300)}, tmp_path / "two")
    ds = open_dataset([one, two])
    assert ds.groups() == ["Greek", "Korean", "Tagalog"]
    assert len(ds.classes) == 5
    assert len(ds.duplicates) == 2


def test_same_name_different_pictures_are_two_classes(tmp_path):
    one = make_tree(omniglot_like({"Greek": 1}, seed0=1), tmp_path / "one")
    two = make_tree(omniglot_like({"Greek": 1}, seed0=50), tmp_path / "two")
    ds = open_dataset([one, two])
    assert [c.key for c in ds.classes] == ["Greek/character01", "Greek/character01[two]"]
    assert ds.duplicates == []


@pytest.mark.parametrize(
    "bad", [b"", b"this is text, not a png", png_bytes(0)[:40]], ids=["empty", "text", "truncated"]
)
def test_corrupt_image_is_reported_by_path(tmp_path, bad):
    files = omniglot_like({"Alpha": 1}, drawers=2)
    files["Alpha/character01/1001_03.png"] = bad
    ds = open_dataset(make_zip(files, tmp_path / "c.zip"))
    with pytest.raises(DataError, match=r"c\.zip:Alpha/character01/1001_03\.png"):
        ds.load(PreprocessSpec())


def test_missing_root_and_mixed_layout_are_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        open_dataset(tmp_path / "nope")
    files = {"a/b/c.png": png_bytes(1), "d/e.png": png_bytes(2)}
    with pytest.raises(DataError, match="mixed or unsupported layout"):
        open_dataset(make_tree(files, tmp_path / "mixed"))


def test_rotations_make_new_classes_of_rotated_images(tmp_path):
    ds = open_dataset(make_tree(omniglot_like({"Alpha": 2}, drawers=1), tmp_path / "r")).with_rotations()
    assert [c.key for c in ds.classes][:4] == [
        "Alpha/character01", "Alpha/character01@rot90", "Alpha/character01@rot180", "Alpha/character01@rot270"
    ]  # fmt: skip
    px = ds.load(PreprocessSpec(size=16)).pixels
    np.testing.assert_array_equal(px[1], np.rot90(px[0], 1, axes=(1, 2)))
    np.testing.assert_array_equal(px[2], np.rot90(px[0], 2, axes=(1, 2)))


def test_real_omniglot_small_sets(omniglot_zips):
    ds = open_dataset(omniglot_zips)
    # The README of the data: 8 distinct alphabets, 242 characters, 4,840 images once Greek and Latin count once.
    assert len(ds.groups()) == 8
    assert len(ds.classes) == 242
    assert ds.num_images == 4840
    assert len(ds.duplicates) == 24 + 26  # Greek and Latin characters of the second set
    assert {r.drawer for c in ds.classes for r in c.images} == set(range(1, 21))


def test_flips_add_the_mirror_image_of_every_rotation(tmp_path):
    ds = open_dataset(make_tree(omniglot_like({"Alpha": 2}, drawers=1), tmp_path / "r")).with_rotations(flips=True)
    keys = [c.key for c in ds.classes]
    assert len(keys) == len(set(keys)) == 2 * 8  # the 8 symmetries of the square, per character
    assert keys[:3] == ["Alpha/character01", "Alpha/character01@flip", "Alpha/character01@rot90"]
    px = ds.load(PreprocessSpec(size=16)).pixels
    np.testing.assert_array_equal(px[1], px[0][:, :, ::-1])
    np.testing.assert_array_equal(px[3], np.rot90(px[0], 1, axes=(1, 2))[:, :, ::-1])
    # Applied to a dataset that already has them, nothing multiplies twice.
    assert len(ds.with_rotations(flips=True).classes) == 16
