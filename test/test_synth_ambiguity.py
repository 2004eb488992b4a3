"""Tests of synth.ambiguity and the hashing text embedder."""

from __future__ import annotations

import numpy as np
import pytest

from spatialvlm_ros.synth.ambiguity import (
    AmbiguityConfig,
    CLAUSES,
    location_clauses,
    resolve_ambiguity,
    similarity_groups,
)
from spatialvlm_ros.synth.stages import build, Region
from spatialvlm_ros.synth.text_embedding import HashingEmbedder

EMBEDDER = HashingEmbedder()
SIZE = (320, 240)


def _region(caption: str, u: float, v: float, object_id: str | None = None) -> Region:
    box = np.array([u - 10, v - 10, u + 10, v + 10], dtype=np.float64)
    return Region(box, np.zeros((240, 320), bool), caption, 1.0, object_id or caption)


def _resolve(regions, seed=0, config=None):
    return resolve_ambiguity(regions, EMBEDDER, SIZE, np.random.default_rng(seed), config)


def test_embedder_is_deterministic_unit_norm_and_registered():
    e = build('embedder', 'hashing')
    a = e.run(['red mug', 'the red mug', 'blue duck', ''])
    assert a.shape == (4, 1024) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a[:3], axis=1), 1.0, rtol=1e-6)
    assert not a[3].any()  # no words
    assert a[0] @ a[1] == pytest.approx(1.0)  # stop words ignored
    assert a[0] @ a[2] < 0.3
    np.testing.assert_array_equal(a, HashingEmbedder().run(['red mug', 'the red mug',
                                                            'blue duck', '']))


def test_two_similar_captions_get_distinct_location_clauses():
    result = _resolve([_region('red mug', 50, 120, 'a'), _region('red mug', 250, 110, 'b'),
                       _region('blue duck', 160, 60, 'c')])
    captions = {r.object_id: r.caption for r in result.regions}
    assert captions['c'] == 'blue duck'
    assert 'left' in captions['a'] and 'right' in captions['b']
    assert captions['a'] != captions['b']
    assert captions['a'].startswith('red mug') and captions['b'].startswith('red mug')
    assert result.disambiguated == 2 and result.groups == [[0, 1]]
    assert result.dropped == {'stuff': 0, 'ambiguous': 0}


def test_vertical_offset_gives_top_and_bottom_clauses():
    result = _resolve([_region('the red mug', 160, 200, 'low'),
                       _region('red mug', 170, 30, 'high')])
    captions = {r.object_id: r.caption for r in result.regions}
    assert 'bottom' in captions['low'] or 'lower' in captions['low']
    assert 'top' in captions['high'] or 'higher' in captions['high']
    assert location_clauses(np.array([0, 0, 10, 10]), np.array([0, 100, 10, 110]),
                            320, 240) == ('top', 'bottom')
    assert set(CLAUSES) == {'left', 'right', 'top', 'bottom'}


def test_a_pair_with_no_side_between_them_is_dropped_not_told_apart():
    # the same caption on two regions centred together (one nested in the other)
    result = _resolve([_region('red mug', 160, 120, 'outer'),
                       _region('red mug', 162, 121, 'inner'),
                       _region('blue duck', 40, 40, 'duck')])
    assert [r.object_id for r in result.regions] == ['duck']
    assert result.dropped == {'stuff': 0, 'ambiguous': 2} and result.disambiguated == 0


def test_groups_of_three_are_dropped_and_stuff_removed():
    result = _resolve([_region('red mug', 20, 20, 'a'), _region('red mug', 120, 20, 'b'),
                       _region('the red mug', 220, 20, 'c'), _region('table', 100, 200, 't'),
                       _region('wooden table', 200, 200, 'w'), _region('green cube', 50, 150)])
    assert [r.caption for r in result.regions] == ['green cube']
    assert result.dropped == {'stuff': 2, 'ambiguous': 3}
    assert result.kept_indices == [5]


def test_thresholds_and_components():
    sim = np.array([[1.0, 0.95, 0.1], [0.95, 1.0, 0.92], [0.1, 0.92, 1.0]])
    assert similarity_groups(sim, 0.9) == [[0, 1, 2]]  # chained: connected components
    assert similarity_groups(sim, 0.93) == [[0, 1], [2]]
    strict = AmbiguityConfig(similarity_threshold=0.99)
    result = _resolve([_region('red mug', 20, 20), _region('small red ceramic mug', 200, 20)],
                      config=strict)
    assert [r.caption for r in result.regions] == ['red mug', 'small red ceramic mug']
    with pytest.raises(ValueError):
        AmbiguityConfig(similarity_threshold=2.0)
    assert _resolve([]).regions == []
