"""Group splits: disjoint, complete, seeded."""

from __future__ import annotations

import pytest

from metaedge.data import split_groups
from metaedge.errors import DataError

GROUPS = ["Balinese", "Early_Aramaic", "Greek", "Japanese_(katakana)", "Korean", "Latin", "Sanskrit", "Tagalog"]


def test_split_is_a_seeded_partition():
    s = split_groups(GROUPS, holdout=2, val=1, seed=0)
    assert len(s.test) == 2 and len(s.val) == 1 and len(s.train) == 5
    assert sorted(s.train + s.val + s.test) == sorted(GROUPS)
    assert split_groups(list(reversed(GROUPS)), holdout=2, val=1, seed=0) == s  # order of input does not matter
    tests = {split_groups(GROUPS, holdout=2, seed=k).test for k in range(10)}
    assert len(tests) > 1  # the seed chooses


def test_split_needs_a_training_group():
    with pytest.raises(DataError, match="one to train on"):
        split_groups(GROUPS, holdout=6, val=2)
    with pytest.raises(DataError, match="negative"):
        split_groups(GROUPS, holdout=-1)
