"""Episodic sampler invariants: sizes, labels, disjointness, groups, drawers, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from metaedge.data import EpisodeMix, EpisodeSampler
from metaedge.errors import DataError


def toy(groups=(("A", 6), ("B", 4)), drawers=5):
    """Per-image labels, class groups and drawers: each class has one image by each of `drawers` drawers."""
    class_groups = [g for g, n in groups for _ in range(n)]
    labels = np.repeat(np.arange(len(class_groups)), drawers)
    drawer_ids = np.tile(np.arange(1, drawers + 1), len(class_groups))
    return labels, class_groups, drawer_ids


@pytest.mark.parametrize("way, shot, query", [(5, 1, 1), (3, 2, 3), (10, 1, 4)])
def test_episode_invariants(way, shot, query):
    labels, groups, drawers = toy()
    sampler = EpisodeSampler(labels, groups, way, shot, query, drawers=drawers, seed=3)
    for ep in sampler.episodes(50):
        assert ep.support.shape == (way * shot,) and ep.query.shape == (way * query,)
        assert len(set(ep.classes.tolist())) == way
        assert not set(ep.support) & set(ep.query)
        # labels say which episode class an image belongs to, class-major
        np.testing.assert_array_equal(labels[ep.support], ep.classes[ep.support_labels])
        np.testing.assert_array_equal(labels[ep.query], ep.classes[ep.query_labels])
        np.testing.assert_array_equal(ep.support_labels, np.repeat(np.arange(way), shot))


def test_within_group_keeps_episodes_inside_one_group_with_enough_classes():
    labels, groups, drawers = toy()
    sampler = EpisodeSampler(labels, groups, 5, 1, 1, within_group=True, seed=0)
    assert sampler.pool_names == ["A"]  # B has only 4 classes
    seen = set()
    for ep in sampler.episodes(30):
        seen |= {groups[c] for c in ep.classes}
    assert seen == {"A"}
    sampler = EpisodeSampler(labels, groups, 4, 1, 1, within_group=True, seed=0)
    per_episode = [{groups[c] for c in ep.classes} for ep in sampler.episodes(40)]
    assert all(len(g) == 1 for g in per_episode) and set().union(*per_episode) == {"A", "B"}


def test_disjoint_drawers_one_support_drawer_for_the_whole_episode():
    labels, groups, drawers = toy()
    sampler = EpisodeSampler(labels, groups, 5, 1, 3, drawers=drawers, disjoint_drawers=True, seed=1)
    for ep in sampler.episodes(40):
        support_drawers = set(drawers[ep.support])
        assert len(support_drawers) == 1  # Lake et al.: one drawer gives the support set
        assert not support_drawers & set(drawers[ep.query])


def test_same_seed_same_episodes_and_index_addressable():
    labels, groups, drawers = toy()
    a = list(EpisodeSampler(labels, groups, 5, 1, 2, seed=7).episodes(10))
    b = list(EpisodeSampler(labels, groups, 5, 1, 2, seed=7).episodes(5, start=5))
    c = list(EpisodeSampler(labels, groups, 5, 1, 2, seed=8).episodes(10))
    for x, y in zip(a[5:], b):
        np.testing.assert_array_equal(x.support, y.support)
        np.testing.assert_array_equal(x.query, y.query)
    assert any(not np.array_equal(x.query, y.query) for x, y in zip(a, c))


def test_requests_that_cannot_be_served_are_errors():
    labels, groups, drawers = toy()
    with pytest.raises(DataError, match="11-way"):
        EpisodeSampler(labels, groups, 11, 1, 1)
    with pytest.raises(DataError, match="no group has 7 classes"):
        EpisodeSampler(labels, groups, 7, 1, 1, within_group=True)
    with pytest.raises(DataError, match="drawer"):
        EpisodeSampler(labels, groups, 5, 1, 1, disjoint_drawers=True)  # no drawers given
    with pytest.raises(DataError, match="6-way"):
        EpisodeSampler(labels, groups, 6, 3, 3)  # 5 images per class < 6 needed: no class is usable
    with pytest.raises(DataError, match="way >= 1"):
        EpisodeSampler(labels, groups, 5, 0, 1)


def test_episode_mix_draws_the_asked_fraction_within_one_group_deterministically():
    labels, groups, drawers = toy(groups=(("A", 6), ("B", 6)))
    across = EpisodeSampler(labels, groups, 4, 1, 1, seed=2)
    within = EpisodeSampler(labels, groups, 4, 1, 1, within_group=True, seed=2)
    mix = EpisodeMix(across, within, 0.3, seed=2)
    chosen = [mix.is_within(i) for i in range(2000)]
    assert 0.27 < np.mean(chosen) < 0.33
    for i in range(200):
        ep, expected = mix.episode(i), (within if chosen[i] else across).episode(i)
        np.testing.assert_array_equal(ep.support, expected.support)
        np.testing.assert_array_equal(ep.query, expected.query)
    # across-group episodes do mix groups, so the two kinds really differ
    assert any(len({groups[c] for c in across.episode(i).classes}) == 2 for i in range(20))
    assert not any(EpisodeMix(across, within, 0.0, seed=2).is_within(i) for i in range(200))
    assert all(EpisodeMix(across, within, 1.0, seed=2).is_within(i) for i in range(200))
    # the same (seed, index) decides the same way in a fresh object: a resumed run sees the same episodes
    assert [EpisodeMix(across, within, 0.3, seed=2).is_within(i) for i in range(50)] == chosen[:50]
    with pytest.raises(DataError, match=r"within-group episodes must be in \[0, 1\]"):
        EpisodeMix(across, within, 1.5)
